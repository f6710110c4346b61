"""A template from a snapshot: the snapshot's overlay layer, stacked on its template.

A snapshot is a copy of a sandbox's disk image (see snapshots.py): an ext4
file system holding the overlay's ``upper/`` (and ``work/``). The upper dir
is exactly what the sandbox changed over its template, whiteouts and opaque
directories included, owners already shifted: the same thing a template
build captures from its build sandbox. So the image is loop-mounted
read-only, its upper dir copied into a template layer with ``cp -a`` as a
build's is, and the image let go. The template is then independent of the
snapshot: deleting the snapshot later leaves it whole.

The mount is made in a mount namespace of its own (``unshare``), by the
process that copies: no other process ever sees it (runc copies the host's
mount table into every new sandbox, and a copy there would keep the image
busy), and it ends with that process however the copy ends, a server killed
mid-copy included: nothing is left mounted on the host to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from pathlib import Path

from sandbank.errors import InvalidState, SnapshotNotFound
from sandbank.runtime import _proc
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.linux import disk
from sandbank.runtime.templates import TemplateStore, catalog, layer

#: $1 image, $2 mount point, $3 the layer to make. ``ro`` gives a read-only loop
#: device (the snapshot is only ever read); ``noload``: no journal replay either.
#: Exit 3: the image holds no overlay layer.
COPY_SCRIPT = """
mount -t ext4 -o ro,loop,noload,nodev,nosuid,noexec "$1" "$2"
[ -d "$2/upper" ] || exit 3
mkdir "$3"
exec cp -a "$2/upper/." "$3"
"""
NO_LAYER = 3


def prefetch(image: Path) -> int:
    """Ask for the image's data in large sequential reads before the copy asks
    for its many small files a block at a time. Only extents holding data: a
    sparse 10 GB image holding 30 MB reads 30 MB. Returns the bytes asked for."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size, offset, asked = os.fstat(fd).st_size, 0, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here on
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
            asked += end - start
            offset = end
        return asked
    finally:
        os.close(fd)


async def copy_layer(image: Path, point: Path, rootfs: Path) -> None:
    """The upper dir of the snapshot disk ``image`` copied to ``rootfs`` (new),
    mounted at ``point`` (an empty dir) in a private mount namespace."""
    await asyncio.to_thread(prefetch, image)
    point.mkdir()
    try:
        result = await _proc.run(
            ["unshare", "--mount", "--propagation", "private", "--",
             "sh", "-euc", COPY_SCRIPT, "sh", str(image), str(point), str(rootfs)],
            timeout=1800, new_session=True, check=False,
        )  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            point.rmdir()
        # The namespace went with the process; its loop device clears itself a
        # moment later: wait for that, so the caller finds nothing bound.
        await disk.detach_loops(image)
    if result.returncode == NO_LAYER:
        raise InvalidState(f"snapshot {image.parent.name} holds no overlay layer")
    if result.returncode != 0:
        raise _proc.failure(result, f"copying the layer of snapshot {image.parent.name}")
    layer.drop_per_sandbox(rootfs)


async def install(store: TemplateStore, image: Path, info: TemplateInfo) -> TemplateInfo:
    """Template ``info.name`` from the snapshot disk ``image``, stacked on the
    trees of ``info.base`` and cached under ``info.recipe_hash``."""
    if info.base is None or not info.recipe_hash:
        raise InvalidState("a template from a snapshot needs its base and content hash")
    if not image.is_file():
        raise SnapshotNotFound(f"snapshot disk {image.parent.name} has no files on this host")
    base = store.resolve(info.base)
    lowers = store.lowers(base)
    started = time.monotonic()

    async def fill(rootfs: Path) -> dict[str, object]:
        await copy_layer(image, rootfs.parent / "snapshot", rootfs)
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
