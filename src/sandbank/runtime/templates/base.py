"""Building a template rootfs: debootstrap, set up inside a chroot, shift ownership.

The rootfs can also start from a *seed*: an existing, unshifted debootstrap
of the recipe's package set (offline hosts, tests). It is copied, never
modified, and checked to contain every package of the recipe.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from sandbank.errors import RuntimeFailure
from sandbank.runtime import _proc
from sandbank.runtime.templates.recipe import Recipe
from sandbank.runtime.templates.shift import shift_tree

Progress = Callable[[str], None]

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


def _deb_lines(text: str) -> list[tuple[str, list[str]]]:
    """(uri, suites) of each enabled ``deb`` line of a one-line-style sources file."""
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            found.append((line[1], [line[2]]))
    return found


def _deb822(text: str) -> list[tuple[str, list[str]]]:
    """(uri, suites) of each enabled ``deb`` stanza of a deb822 ``.sources`` file."""
    found: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        found.extend((uri, suites) for uri in fields.get("uris", "").split())
    return found


def host_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str | None:
    """The first http(s) source of the host serving the Debian ``suite`` itself.

    Security and third-party repositories are skipped: they do not carry the
    full suite debootstrap needs.
    """
    candidates: list[tuple[str, list[str]]] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        candidates += _deb_lines(main.read_text())
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                candidates += _deb_lines(path.read_text())
            elif path.suffix == ".sources":
                candidates += _deb822(path.read_text())
    for uri, suites in candidates:
        if not uri.startswith(("http://", "https://")) or "security" in uri:
            continue
        if suite in suites:
            return uri.rstrip("/")
    return None


def installed_packages(rootfs: Path) -> set[str]:
    """Packages dpkg considers installed in ``rootfs``."""
    status = rootfs / "var/lib/dpkg/status"
    installed: set[str] = set()
    for stanza in status.read_text().split("\n\n"):
        name = re.search(r"^Package: (\S+)", stanza, re.M)
        state = re.search(r"^Status: .* installed$", stanza, re.M)
        if name and state:
            installed.add(name.group(1))
    return installed


async def debootstrap(recipe: Recipe, rootfs: Path, mirror: str, progress: Progress) -> None:
    progress(f"debootstrap {recipe.suite} from {mirror}")
    await _proc.run(
        [
            "debootstrap", f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}", recipe.suite, str(rootfs), mirror,
        ],
        env=CHROOT_ENV,
        timeout=3600,
        on_line=progress,
        new_session=True,
    )  # fmt: skip


async def copy_seed(recipe: Recipe, seed: Path, rootfs: Path, progress: Progress) -> None:
    if not (seed / "var/lib/dpkg/status").is_file():
        raise RuntimeFailure(f"template seed {seed} is not a Debian root filesystem")
    missing = set(recipe.packages) - installed_packages(seed)
    if missing:
        raise RuntimeFailure(f"template seed {seed} lacks packages: {', '.join(sorted(missing))}")
    progress(f"copying seed {seed}")
    rootfs.mkdir(parents=True, exist_ok=True)
    # -a keeps ownership, modes, hard links and xattrs; the seed stays untouched.
    await _proc.run(["cp", "-a", f"{seed}/.", str(rootfs)], timeout=1800, new_session=True)


async def build_rootfs(
    recipe: Recipe,
    rootfs: Path,
    *,
    mirror: str | None,
    seed: Path | None,
    progress: Progress,
) -> None:
    """Produce the finished, shifted tree of ``recipe`` at ``rootfs`` (which must not exist)."""
    if seed is not None:
        await copy_seed(recipe, seed, rootfs, progress)
    else:
        mirror = mirror or host_mirror(recipe.suite)
        if mirror is None:
            raise RuntimeFailure(
                f"no Debian mirror for {recipe.suite}: set template_mirror "
                "(SANDBANK_TEMPLATE_MIRROR), e.g. http://deb.debian.org/debian"
            )
        await debootstrap(recipe, rootfs, mirror, progress)
    progress("setting up user, sudo and locale")
    await _proc.run(
        ["chroot", str(rootfs), "/bin/sh", "-eu", "-c", recipe.setup],
        env=CHROOT_ENV,
        timeout=600,
        on_line=progress,
        new_session=True,
    )
    progress(f"shifting ownership by {recipe.id_shift}")
    count = await asyncio.to_thread(shift_tree, rootfs, recipe.id_shift, recipe.id_range)
    progress(f"shifted {count} inodes")
