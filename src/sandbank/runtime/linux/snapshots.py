"""Snapshots: consistent copies of a sandbox's disk image, kept under the data dir.

    <data_dir>/snapshots/<snapshot_id>/disk.img      the copy (sparse, or a reflink)
    <data_dir>/snapshots/<snapshot_id>/disk.img.tmp  while copying; never a snapshot

A running sandbox is made still for the copy: its cgroup is frozen (no
process can write) and its file system frozen with FIFREEZE (the kernel
writes back every dirty page and metadata block, then blocks new writes), so
the image on the host is a clean file system for as long as the copy takes.
Both are undone in ``finally``. A paused sandbox is frozen already; a stopped
one has no mount and is copied as it is.

The copy is a reflink (FICLONE) where the data dir's file system shares
blocks (btrfs, xfs), else a sparse copy: only the extents SEEK_DATA finds,
with copy_file_range, so a 1 GB image holding 30 MB costs 30 MB. An ENOSPC
(or EDQUOT) mid-copy removes the partial copy and reports DiskFull; the
source is only ever read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sandbank.errors import (
    DiskFull,
    InvalidState,
    RuntimeFailure,
    SandboxNotFound,
    SnapshotNotFound,
)
from sandbank.runtime.linux import mounts
from sandbank.runtime.linux.layout import check_id

if TYPE_CHECKING:
    from sandbank.runtime.linux.driver import LinuxRuntime

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
FICLONE = 0x40049409
_CHUNK = 64 * 1024 * 1024


def root(rt: LinuxRuntime) -> Path:
    return rt.data_dir / "snapshots"


def image_of(rt: LinuxRuntime, snapshot_id: str) -> Path:
    return root(rt) / check_id(snapshot_id) / "disk.img"


def allocated(path: Path) -> int:
    """Bytes the file occupies on the host (not its apparent size)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def copy_image(src: Path, dst: Path, durable: bool = True) -> str:
    """Copy ``src`` to a new ``dst``, sharing blocks if the file system can, else
    sparse; returns ``reflink`` or ``sparse``. On any failure ``dst`` is removed.
    ``durable``: fsync the copy (a snapshot must outlive a host crash; a
    sandbox's disk need not, see disk.py)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                return "reflink"
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    raise
            _sparse_copy(fin.fileno(), fout.fileno())
            if durable:
                os.fsync(fout.fileno())
            return "sparse"
        except BaseException:
            # Only what this call created: "xb" refused an existing file above.
            dst.unlink(missing_ok=True)
            raise


def _sparse_copy(src: int, dst: int) -> None:
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here on
                return
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        pos = start
        while pos < end:
            count = min(_CHUNK, end - pos)
            try:
                done = os.copy_file_range(src, dst, count, pos, pos)
            except OSError as exc:
                # Across file systems (a snapshot dir on its own mount) the kernel refuses.
                if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                done = _copy_plain(src, dst, count, pos)
            if done == 0:
                raise OSError(errno.EIO, f"short copy at offset {pos}")
            pos += done
        offset = end


def _copy_plain(src: int, dst: int, count: int, pos: int) -> int:
    data = os.pread(src, min(count, 8 * 1024 * 1024), pos)
    view = memoryview(data)
    while view:
        written = os.pwrite(dst, view, pos)
        view, pos = view[written:], pos + written
    return len(data)


def _full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


async def take(rt: LinuxRuntime, sandbox_id: str, snapshot_id: str) -> int:
    """Copy the disk of ``sandbox_id`` as snapshot ``snapshot_id``; its host bytes."""
    async with rt._lock(check_id(sandbox_id)):
        box = rt._box(sandbox_id)
        if not box.image.is_file():
            raise SandboxNotFound(f"sandbox {sandbox_id} has no disk on this host")
        folder = root(rt) / check_id(snapshot_id)
        folder.mkdir(parents=True, mode=0o700)
        tmp = folder / "disk.img.tmp"
        try:
            async with _still(rt, sandbox_id):
                await asyncio.to_thread(copy_image, box.image, tmp)
            os.rename(tmp, folder / "disk.img")
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if _full(exc):
                raise DiskFull(
                    f"no room on the server's disk for a snapshot of sandbox {sandbox_id} "
                    f"({allocated(box.image)} bytes); the sandbox is unchanged",
                    needed_bytes=allocated(box.image),
                ) from exc
            raise RuntimeFailure(f"snapshot of sandbox {sandbox_id} failed: {exc}") from exc
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return allocated(folder / "disk.img")


@contextlib.asynccontextmanager
async def _still(rt: LinuxRuntime, sandbox_id: str) -> AsyncIterator[None]:
    """Nothing writes to the sandbox's disk inside this block."""
    box = rt._box(sandbox_id)
    if not mounts.is_mounted(box.disk):
        yield  # stopped: the image is closed
        return
    cgroup = rt.cgroup(sandbox_id)
    thaw_after = False
    if cgroup is not None and cgroup.existing() and not cgroup.frozen():
        if not await cgroup.freeze_wait():
            with contextlib.suppress(OSError):
                cgroup.thaw()
            raise RuntimeFailure(f"sandbox {sandbox_id} did not freeze in time for a snapshot")
        thaw_after = True
    try:
        fd = os.open(box.disk, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            await asyncio.to_thread(fcntl.ioctl, fd, FIFREEZE, 0)
            try:
                yield
            finally:
                fcntl.ioctl(fd, FITHAW, 0)
        finally:
            os.close(fd)
    finally:
        if thaw_after and cgroup is not None:
            cgroup.thaw()


def thaw_disk(rt: LinuxRuntime, sandbox_id: str) -> None:
    """Undo a file system freeze a server that died mid-snapshot left behind
    (a no-op on a disk that is not frozen)."""
    box = rt._box(sandbox_id)
    if not mounts.is_mounted(box.disk):
        return
    with contextlib.suppress(OSError):
        fd = os.open(box.disk, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        finally:
            os.close(fd)


async def restore(rt: LinuxRuntime, sandbox_id: str, snapshot_id: str) -> None:
    """Make a copy of the snapshot the disk of a stopped (or not yet made) sandbox."""
    source = image_of(rt, snapshot_id)
    if not source.is_file():
        raise SnapshotNotFound(f"snapshot {snapshot_id} has no files on this host")
    async with rt._lock(check_id(sandbox_id)):
        box = rt._box(sandbox_id)
        if rt.ocicli.state_dir(sandbox_id).exists() or mounts.is_mounted(box.disk):
            raise InvalidState(f"sandbox {sandbox_id} has a container; stop it first")
        box.root.mkdir(mode=0o711, exist_ok=True)
        tmp = box.root / "disk.img.restore"
        tmp.unlink(missing_ok=True)
        try:
            await asyncio.to_thread(copy_image, source, tmp, False)
        except OSError as exc:
            if _full(exc):
                raise DiskFull(
                    f"no room on the server's disk to restore snapshot {snapshot_id}; "
                    f"sandbox {sandbox_id} is unchanged",
                    needed_bytes=allocated(source),
                ) from exc
            raise RuntimeFailure(f"restoring snapshot {snapshot_id} failed: {exc}") from exc
        # Atomic: the old disk is whole until the new one replaces it.
        os.replace(tmp, box.image)


async def delete(rt: LinuxRuntime, snapshot_id: str) -> None:
    await asyncio.to_thread(shutil.rmtree, root(rt) / check_id(snapshot_id), True)


async def ids(rt: LinuxRuntime) -> set[str]:
    folder = root(rt)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
