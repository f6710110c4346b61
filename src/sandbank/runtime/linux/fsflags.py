"""The inode immutable flag (``chattr +i``), set and cleared with ioctls.

The sandbox's ``run/`` directory is the one host directory root inside a
sandbox can write to: the agent creates its socket there. The server connects
to that path, so a sandbox able to swap the socket for a symlink (say to
another sandbox's socket) would have the server talk to the wrong agent. Once
the agent listens, the directory is made immutable: no entry in it can be
created, removed or renamed, and only host root (CAP_LINUX_IMMUTABLE, which
no sandbox has) can lift that.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from pathlib import Path

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010

# The ioctls are declared with a long but the kernel copies an int; a long-sized
# buffer is right either way on little-endian hosts.
_FLAGS = struct.Struct("=l")


def _update(path: Path, immutable: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, _FLAGS.pack(0))
        (flags,) = _FLAGS.unpack(raw)
        wanted = flags | FS_IMMUTABLE_FL if immutable else flags & ~FS_IMMUTABLE_FL
        if wanted != flags:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS.pack(wanted))
    finally:
        os.close(fd)


def seal(path: Path) -> None:
    _update(path, True)


def unseal(path: Path) -> None:
    """Clear the flag if ``path`` exists; a missing directory is already gone."""
    with contextlib.suppress(FileNotFoundError):
        _update(path, False)


def is_sealed(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        (flags,) = _FLAGS.unpack(fcntl.ioctl(fd, FS_IOC_GETFLAGS, _FLAGS.pack(0)))
    finally:
        os.close(fd)
    return bool(flags & FS_IMMUTABLE_FL)


def check_supported(parent: Path) -> None:
    """Raise OSError if directories under ``parent`` cannot be made immutable."""
    probe = parent / f".seal-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        seal(probe)
        unseal(probe)
    finally:
        with contextlib.suppress(OSError):
            unseal(probe)
        probe.rmdir()
