"""Template recipes: what goes into a template, hashed to decide when to rebuild.

Everything that changes the built tree belongs in the recipe (and so in its
hash); changing any of it rebuilds the template on the next ``ensure``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sandbank.runtime.linux.oci import ID_RANGE, ID_SHIFT

#: Bumped when the build procedure itself (not a recipe) changes the result.
BUILD_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    variant: str
    packages: tuple[str, ...]
    #: Run with /bin/sh -eu inside the chroot after debootstrap.
    setup: str
    #: Host uid/gid of root inside; the tree is stored shifted by this much.
    id_shift: int
    id_range: int

    def digest(self) -> str:
        body = json.dumps({"format": BUILD_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


BASE_SETUP = r"""
groupadd --gid 1000 user
useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user
# Agents install and configure things: passwordless sudo, validated before it counts.
printf 'user ALL=(ALL:ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/90-user
chmod 0440 /etc/sudoers.d/90-user
visudo -cqf /etc/sudoers.d/90-user
# C.UTF-8 is built into glibc: nothing to generate, only to select.
printf 'LANG=C.UTF-8\n' > /etc/default/locale
# Mount points for the agent's socket and code, so runc need not create them.
mkdir -p /opt/sandbank/lib /run/sandbank
printf 'sandbox\n' > /etc/hostname
# The downloaded .debs only take space; runc provides /dev at run time.
apt-get clean
find /dev -mindepth 1 -delete
"""

BASE_PACKAGES = (
    "python3", "python3-pip", "sudo", "curl", "git", "procps", "iproute2",
    "ca-certificates", "locales",
)  # fmt: skip

BASE = Recipe(
    name="base",
    suite="bookworm",
    variant="minbase",
    packages=BASE_PACKAGES,
    setup=BASE_SETUP,
    id_shift=ID_SHIFT,
    id_range=ID_RANGE,
)

RECIPES: dict[str, Recipe] = {BASE.name: BASE}
