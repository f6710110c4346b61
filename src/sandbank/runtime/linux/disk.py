"""Per-sandbox disks: a sparse ext4 image, loop-mounted as the overlay's upper layer.

The image's size is the sandbox's disk limit: a write past it fails with
ENOSPC inside the sandbox and nowhere else. Formatting is cheap (~11 ms for
1 GB) but not free, so a small pool of pre-formatted images per size is kept
warm in the background and ``create`` only has to rename one into place.

A disk lives exactly as long as its sandbox and is deleted with it; a host
that crashes takes every sandbox with it. So nothing is paid for surviving a
crash: no journal (no jbd2 thread, no double writes), no write barriers (an
fsync inside a sandbox is not a flush of the host's disk), and no background
zeroing of inode tables (which would also fill the sparse image).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from sandbank.runtime import _proc
from sandbank.runtime.linux import kernel

log = logging.getLogger(__name__)

GIB = 1024**3
MOUNT_FLAGS = kernel.MS_NOATIME | kernel.MS_NODEV
MOUNT_OPTIONS = "nobarrier,noinit_itable"
#: How long teardown waits for the kernel to let go of a disk's loop device.
RELEASE_SECONDS = 5.0


async def format_image(path: Path, size_gb: int, owner: int) -> None:
    """Create a sparse ext4 image whose root directory belongs to ``owner``.

    ``-m 0``: root inside a sandbox is not host root, so blocks reserved for
    root would be unusable; the whole size goes to the sandbox.
    """
    with open(path, "wb") as fh:
        fh.truncate(size_gb * GIB)
    await _proc.run(
        [
            "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
            "-E", f"root_owner={owner}:{owner},lazy_itable_init=1",
            str(path),
        ],
        timeout=120,
    )  # fmt: skip


def mount_image(image: Path, point: Path) -> None:
    """Loop-mount ``image`` at ``point`` (system calls, ~1 ms: no mount(8) process)."""
    device, fd = kernel.attach_loop(image)
    try:
        kernel.mount(device, point, "ext4", MOUNT_FLAGS, MOUNT_OPTIONS)
    finally:
        # The mount holds the device now; without one, this close releases it.
        os.close(fd)


def loops_backed_by(image: Path, among: Iterable[str] | None = None) -> list[str]:
    """Loop devices whose backing file is ``image`` (as attached, or since deleted);
    ``among``: only these devices are looked at (default: all of the host's)."""
    target = str(image)
    if among is None:
        files = list(Path("/sys/block").glob("loop*/loop/backing_file"))
    else:
        files = [Path("/sys/block", Path(dev).name, "loop", "backing_file") for dev in among]
    found = []
    for backing in files:
        with contextlib.suppress(OSError):
            name = backing.read_text().strip().removesuffix(" (deleted)")
            if name == target:
                found.append("/dev/" + backing.parts[3])
    return found


async def detach_loops(image: Path, timeout: float = RELEASE_SECONDS) -> None:
    """Unbind every loop device of ``image`` and wait until the kernel has.

    After the last unmount the device clears itself, but a reference the
    unmount did not drop itself (a dying sandbox's open file) can delay that
    by a moment; teardown must not report a device that is about to go.
    The host's devices are scanned once; the wait watches only the ones
    found (a scan reads one sysfs file per loop device: 500 at 500 sandboxes,
    every 5 ms, for as long as the wait lasts).
    """
    deadline = time.monotonic() + timeout
    devices = loops_backed_by(image)
    while devices:
        for dev in devices:
            with contextlib.suppress(FileNotFoundError):
                kernel.detach_loop(dev, image)
        devices = loops_backed_by(image, among=devices)
        if not devices or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.005)


class DiskPool:
    """Pre-formatted images, ``depth`` per size, under ``root/<size>g/``.

    Images are formatted under a temporary name and renamed when complete, so
    a crash never leaves a half-formatted image in the pool.
    """

    def __init__(self, root: Path, *, owner: int, depth: int, sizes: Iterable[int]) -> None:
        self.root = root
        self.owner = owner
        self.depth = depth
        self.sizes = set(sizes)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closed = False

    def _dir(self, size_gb: int) -> Path:
        return self.root / f"{size_gb}g"

    def _ready(self, size_gb: int) -> list[Path]:
        d = self._dir(size_gb)
        return sorted(d.glob("*.img")) if d.is_dir() else []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)
        for size in sorted(self.sizes):
            self.refill(size)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tmp in self.root.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)

    async def take(self, size_gb: int, dest: Path) -> bool:
        """Put a formatted image of ``size_gb`` at ``dest``; True if it came from the pool.

        The pool is not refilled here: formatting competes for the CPU with the
        rest of the create, so the caller calls ``refill`` once it is done.
        """
        pooled = False
        if self.depth > 0:
            self.sizes.add(size_gb)
            for candidate in self._ready(size_gb):
                try:
                    # Atomic: two concurrent takers can never get the same image.
                    os.rename(candidate, dest)
                except FileNotFoundError:
                    continue
                pooled = True
                break
        if not pooled:
            await format_image(dest, size_gb, self.owner)
        return pooled

    def refill(self, size_gb: int) -> None:
        if self._closed or self.depth <= 0:
            return
        task = self._tasks.get(size_gb)
        if task is None or task.done():
            self._tasks[size_gb] = asyncio.get_running_loop().create_task(self._fill(size_gb))

    async def _fill(self, size_gb: int) -> None:
        d = self._dir(size_gb)
        d.mkdir(parents=True, exist_ok=True)
        try:
            while len(self._ready(size_gb)) < self.depth:
                name = secrets.token_hex(6)
                tmp = d / f"{name}.tmp"
                try:
                    await format_image(tmp, size_gb, self.owner)
                    os.rename(tmp, d / f"{name}.img")
                finally:
                    tmp.unlink(missing_ok=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The pool is an optimisation: create() formats inline when it is empty.
            log.exception("refilling the %d GB disk pool failed", size_gb)
