"""A template from a snapshot: the snapshot's overlay layer, stacked on its template.

A snapshot is a copy of a sandbox's disk image (see snapshots.py): an ext4
file system holding the overlay's ``upper/`` (and ``work/``). The upper dir
is exactly what the sandbox changed over its template, whiteouts and opaque
directories included, owners already shifted: the same thing a template
build captures from its build sandbox. So the image is loop-mounted read-only
(the device refuses writes: the snapshot is only ever read), its upper dir
copied into a template layer by ``layer.copy_upper`` as a build's is, and
the image let go. The template is then independent of the snapshot: deleting
the snapshot later leaves it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sandbank.errors import InvalidState, SnapshotNotFound
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.linux import disk, kernel, mounts
from sandbank.runtime.templates import TemplateStore, catalog, layer

#: Read-only, and nothing on it may act as a device or gain privileges on the host.
MOUNT_FLAGS = kernel.MS_RDONLY | kernel.MS_NODEV | kernel.MS_NOSUID | kernel.MS_NOATIME


def _mount(image: Path, point: Path) -> None:
    device, fd = kernel.attach_loop(image, read_only=True)
    try:
        # noload: never replay a journal (the image has none; a read must not write).
        kernel.mount(device, point, "ext4", MOUNT_FLAGS, "noload")
    finally:
        os.close(fd)  # the mount holds the device now; a failed mount frees it here


@contextlib.asynccontextmanager
async def mounted(image: Path, point: Path) -> AsyncIterator[Path]:
    """``image`` mounted read-only at ``point`` (created and removed here)."""
    point.mkdir()
    try:
        await asyncio.to_thread(_mount, image, point)
        try:
            yield point
        finally:
            await mounts.unmount(point)
            await disk.detach_loops(image)
    finally:
        with contextlib.suppress(OSError):
            point.rmdir()


async def release_abandoned(store: TemplateStore, name: str) -> None:
    """Unmount snapshots a server killed mid-copy left mounted in abandoned work
    dirs of template ``name``, so that removing those dirs can succeed (the loop
    device clears itself with the unmount)."""
    for mount in mounts.under(store.root / name):
        if mount.point.name == "snapshot" and mount.point.parent.name.startswith(".build-"):
            await mounts.unmount(mount.point)


async def install(store: TemplateStore, image: Path, info: TemplateInfo) -> TemplateInfo:
    """Template ``info.name`` from the snapshot disk ``image``, stacked on the
    trees of ``info.base`` and cached under ``info.recipe_hash``."""
    if info.base is None or not info.recipe_hash:
        raise InvalidState("a template from a snapshot needs its base and content hash")
    if not image.is_file():
        raise SnapshotNotFound(f"snapshot disk {image.parent.name} has no files on this host")
    base = store.resolve(info.base)
    lowers = store.lowers(base)
    catalog.check_name(info.name)
    await release_abandoned(store, info.name)
    started = time.monotonic()

    async def fill(rootfs: Path) -> dict[str, object]:
        async with mounted(image, rootfs.parent / "snapshot") as point:
            upper = point / "upper"
            if not upper.is_dir():
                raise InvalidState(f"snapshot {image.parent.name} holds no overlay layer")
            await layer.copy_upper(upper, rootfs)
        return {
            "kind": "snapshot",
            "base": base,
            "snapshot": image.parent.name,
            "recipe_hash": info.recipe_hash,
            "lowers": [str(p.relative_to(store.root)) for p in lowers],
            "config": catalog.config_of(info),
            "capture_seconds": round(time.monotonic() - started, 2),
        }

    return await store.install(info.name, fill)
