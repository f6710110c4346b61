"""The few system calls the driver makes itself instead of spawning a tool.

``mount``/``umount``/``losetup`` cost a process each (~3 ms on a busy host,
more than the kernel work they ask for), and Python 3.11 has no ``setns``.
Everything here is a thin, checked ctypes call; errors are ``OSError`` with
the errno, like the ``os`` module's.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
]  # fmt: skip
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOATIME = 0x400

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

CLONE_NEWUTS = 0x04000000

LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
#: struct loop_info64: device, inode, rdevice, offset, sizelimit; number, encrypt
#: type, key size, flags; file name, crypt name, key; init[2].
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
#: struct loop_config: fd, block size, loop_info64, reserved[8].
_LOOP_CONFIG = struct.Struct(f"=II{_LOOP_INFO64.size}s64s")


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _path(p: str | os.PathLike[str]) -> bytes:
    return os.fsencode(p)


def mount(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    fstype: str,
    flags: int = 0,
    data: str | None = None,
) -> None:
    raw = None if data is None else data.encode()
    if _libc.mount(_path(source), _path(target), fstype.encode(), flags, raw) != 0:
        raise _fail(f"mounting {fstype} {os.fspath(source)} on {os.fspath(target)}")


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    # NOFOLLOW: the mount point lies in a sandbox's directory; never follow a link out of it.
    if _libc.umount2(_path(target), flags | UMOUNT_NOFOLLOW) != 0:
        raise _fail(f"unmounting {os.fspath(target)}")


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns")


def attach_loop(image: str | os.PathLike[str], attempts: int = 20) -> tuple[str, int]:
    """Bind ``image`` to a free loop device; returns its path and an open descriptor.

    The device is set to clear itself (autoclear) once nothing holds it any
    more: the caller mounts it and then closes the descriptor, so unmounting
    releases the device, and a failed mount releases it at that close.
    """
    info = _LOOP_INFO64.pack(
        0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR, os.fsencode(image)[:63], b"", b"", 0, 0
    )
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(attempts):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    _configure(fd, backing, info)
                except OSError as exc:
                    os.close(fd)
                    # Another process took the same free device first: ask again.
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                return device, fd
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, f"no free loop device for {os.fspath(image)}")


def _configure(fd: int, backing: int, info: bytes) -> None:
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, _LOOP_CONFIG.pack(backing, 0, info, b""))
    except OSError as exc:
        # Kernels before 5.8 lack LOOP_CONFIGURE: the two-step way.
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
        fcntl.ioctl(fd, LOOP_SET_FD, backing)
        try:
            fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
        except OSError:
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
            raise


def detach_loop(device: str, image: str | os.PathLike[str]) -> bool:
    """Unbind ``device`` if it is bound to ``image``; one still open is unbound
    once the last holder lets go. False if it was bound to something else.

    Checked through an open descriptor, which keeps the binding from changing
    meanwhile: between a look at sysfs and the unbind, the device could have
    been released and bound again by someone else, to another file.
    """
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # not bound (any more)
                return False
            raise
        fields = _LOOP_INFO64.unpack(info)
        try:
            st = os.stat(image)
            mine = (fields[0], fields[1]) == (st.st_dev, st.st_ino)
        except FileNotFoundError:  # deleted already: the name it was bound under
            mine = fields[9].rstrip(b"\0") == os.fsencode(image)[:63]
        if not mine:
            return False
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        return True
    finally:
        os.close(fd)


async def in_own_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that exists only for it and then ends.

    For calls that change per-thread kernel state (``setns`` into another
    UTS namespace): a pooled thread would carry that state into whatever it
    runs next, a thread that ends takes it with it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, not lost with the thread
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="sandbank-ns", daemon=True).start()
    return await done


def process_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of ``pid`` if it runs and is not a
    zombie; comparing it tells a process from a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text.rsplit(b")", 1)[-1].split()
    # fields[0] is the state, fields[19] the start time.
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])
