"""The sandbox root: the template (read-only, shared) under a per-sandbox writable disk."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandbank.runtime.linux import kernel, mounts


def prepare_upper(disk_point: Path, owner: int) -> tuple[Path, Path]:
    """Create the overlay's upper and work dirs on the mounted disk.

    The upper dir becomes the sandbox's ``/``; it must belong to root inside
    (host ``owner``) or root inside could not create files at the top level.
    """
    upper, work = disk_point / "upper", disk_point / "work"
    for d in (upper, work):
        d.mkdir(mode=0o755, exist_ok=True)
        os.chown(d, owner, owner)
    return upper, work


def mount_overlay(lower: Path | list[Path], upper: Path, work: Path, point: Path) -> None:
    """``lower``: one tree, or a stack of them topmost first (a template built on another)."""
    lowers = lower if isinstance(lower, list) else [lower]
    for p in (*lowers, upper, work):
        mounts.check_option_safe(p)
    # nodev: device nodes are only usable through the /dev runc builds.
    options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    kernel.mount("overlay", point, "overlay", kernel.MS_NODEV, options)


def write_identity(rootfs: Path, hostname: str, owner: int) -> None:
    """/etc/hostname and /etc/hosts for the sandbox's name, as root inside owns them.

    Written through the merged root so they land in the sandbox's own layer;
    opened relative to the rootfs without following symlinks, so a template
    whose /etc/hosts is a symlink cannot make this write outside the sandbox.
    """
    etc = os.open(rootfs / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        hosts = (
            "127.0.0.1\tlocalhost\n"
            f"127.0.1.1\t{hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        for name, text in (("hostname", hostname + "\n"), ("hosts", hosts)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=etc)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(name, flags, 0o644, dir_fd=etc)
            try:
                os.write(fd, text.encode())
                os.fchown(fd, owner, owner)
            finally:
                os.close(fd)
    finally:
        os.close(etc)
