"""Memory snapshots: a checkpoint of a running sandbox's processes and memory
kept with its disk, as a snapshot that outlives the sandbox.

    <data_dir>/snapshots/<snapshot_id>/
        disk.img       the disk, copied in the same freeze as the memory
        memory/        CRIU images and meta.json (checkpoint.py)
        runtime.json   the source's runtime record (template layers, hostname)
        config.json    the source's OCI bundle config

Taking one is a fork's checkpoint (``leave_running``: the source is frozen,
its disk copied and its memory dumped, then it runs on); the images are moved
from the sandbox's dir into the snapshot's and made durable. Making a sandbox
from one is a fork's restore with the snapshot's dir standing in for the
source's: its own disk copy, cgroup, network link and address. Both refuse a
sandbox id that still has a directory; an in-place restore destroys the
sandbox first (the service does).

The snapshot's dir is traversable (0711): CRIU's restore reads some images
as the sandbox's root user, which must be able to reach ``memory/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sandbank.errors import DiskFull, InvalidState, RuntimeFailure, SnapshotNotFound
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.linux import checkpoint, snapshots
from sandbank.runtime.linux.fork_copies import Origin
from sandbank.runtime.linux.layout import SandboxRecord, check_id

if TYPE_CHECKING:
    from sandbank.runtime.linux.checkpoint_flow import Checkpointer

MEMORY = "memory"


def folder(cp: Checkpointer, snapshot_id: str) -> Path:
    return snapshots.root(cp.rt) / check_id(snapshot_id)


def has_memory(cp: Checkpointer, snapshot_id: str) -> bool:
    return (folder(cp, snapshot_id) / MEMORY / checkpoint.META).is_file()


def _bytes(path: Path) -> int:
    """Host bytes of every file under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        total += sum(snapshots.allocated(Path(dirpath) / name) for name in files)
    return total


def _make_durable(path: Path) -> None:
    """fsync every file and directory under ``path`` (a snapshot outlives a host crash)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def take(cp: Checkpointer, sandbox_id: str, snapshot_id: str) -> int:
    """Checkpoint ``sandbox_id`` (left running) into snapshot ``snapshot_id``;
    its host bytes (disk copy and images). Nothing is left behind on failure."""
    rt = cp.rt
    box = rt._box(check_id(sandbox_id))
    target = folder(cp, snapshot_id)
    image = await cp.checkpoint(sandbox_id, leave_running=True)
    try:
        target.mkdir(parents=True, mode=0o711)
        os.chmod(target, 0o711)  # whatever the umask
        os.chmod(target.parent, 0o711)
        images = Path(image)
        await asyncio.to_thread(shutil.move, images / checkpoint.DISK_COPY, target / "disk.img")
        os.chmod(target / "disk.img", 0o600)
        await asyncio.to_thread(shutil.move, images, target / MEMORY)
        shutil.copyfile(box.record, target / "runtime.json")
        shutil.copyfile(box.config, target / "config.json")
        await asyncio.to_thread(_make_durable, target)
    except BaseException as exc:
        await cp.discard(image)
        await asyncio.to_thread(shutil.rmtree, target, True)
        if isinstance(exc, OSError) and snapshots._full(exc):
            raise DiskFull(
                f"no room on the server's disk for a memory snapshot of sandbox {sandbox_id}; "
                "the sandbox is unchanged"
            ) from exc
        if isinstance(exc, OSError):
            raise RuntimeFailure(f"memory snapshot of sandbox {sandbox_id} failed: {exc}") from exc
        raise
    return await asyncio.to_thread(_bytes, target)


async def restore(cp: Checkpointer, snapshot_id: str, spec: SandboxSpec) -> None:
    """Start ``spec.id``, which has no directory, from the memory snapshot: the
    snapshot's processes and memory, its own disk copy, ``spec``'s limits and
    egress policy, a new address."""
    where = folder(cp, snapshot_id)
    if not has_memory(cp, snapshot_id):
        raise SnapshotNotFound(f"snapshot {snapshot_id} has no memory image on this host")
    record = SandboxRecord.load(where / "runtime.json")
    gone = [] if record is None else [p for p in record.lower.split(":") if not Path(p).is_dir()]
    if gone:
        # Its processes need the very files they were started on.
        raise InvalidState(
            f"the template layers snapshot {snapshot_id} was taken on are gone (the template "
            f"was rebuilt or deleted: {gone[0]}); its processes cannot be restored any more"
        )
    box = cp.rt._box(check_id(spec.id))
    if box.root.exists():
        raise InvalidState(f"sandbox {spec.id} still has a directory; destroy it first")
    origin = Origin(
        record=where / "runtime.json",
        config=where / "config.json",
        disk=where / "disk.img",
        limits={"vcpu": spec.vcpu, "memory_mb": spec.memory_mb, "pids_limit": spec.pids_limit},
    )
    await cp.restore(spec.id, str(where / MEMORY), network=spec.network, origin=origin)
