"""DNS for sandboxes: which upstream resolver to use, and the sandbox's resolv.conf."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

#: Where the host's resolvers are listed; systemd-resolved's own list second,
#: for hosts whose /etc/resolv.conf names only its loopback stub.
RESOLV_FILES = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))


def upstream_resolvers(files: Sequence[Path] = RESOLV_FILES) -> list[str]:
    """IPv4 nameservers of the first file that names any not on loopback."""
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        found: list[str] = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    addr = ipaddress.ip_address(parts[1])
                    if addr.version == 4 and not addr.is_loopback:
                        found.append(str(addr))
        if found:
            return found
    return []


def write_resolv_conf(rootfs: Path, text: str, owner: int) -> None:
    """/etc/resolv.conf of a sandbox that nothing untrusted has run in yet,
    written through its merged root without following symlinks (a template's
    resolv.conf is often one), owned by root inside."""
    etc = os.open(rootfs / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("resolv.conf", dir_fd=etc)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open("resolv.conf", flags, 0o644, dir_fd=etc)
        try:
            os.write(fd, text.encode())
            os.fchown(fd, owner, owner)
        finally:
            os.close(fd)
    finally:
        os.close(etc)
