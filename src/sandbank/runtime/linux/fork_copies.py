"""The new sandboxes a checkpoint is restored as: their dirs, disk copies,
mounts, run dirs and bundle configs, made like the source's.

For a fork they are made while criu dumps the source (``prepare``, started
once the disk copy exists: they need nothing else of the dump), so that a
restore only runs criu. A memory snapshot's restore makes its one copy on the
way (``clone_box`` with the snapshot as ``Origin``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sandbank.errors import InvalidState, SandboxNotFound
from sandbank.protocol.agent import SOCKET_DIR
from sandbank.runtime.linux import checkpoint, fsflags, phases, rootfs, teardown
from sandbank.runtime.linux.layout import SandboxDir, SandboxRecord, check_id

if TYPE_CHECKING:
    from sandbank.runtime.linux.driver import LinuxRuntime

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Origin:
    """What a new sandbox is cloned from besides the CRIU images."""

    record: Path
    config: Path
    disk: Path
    #: Fields of the runtime record to set on the clone (vcpu, memory_mb, pids_limit).
    limits: dict[str, float | int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of_fork(cls, source: SandboxDir, images: Path) -> Origin:
        return cls(source.record, source.config, images / checkpoint.DISK_COPY)


async def prepare(
    rt: LinuxRuntime,
    prepared: dict[str, Path],
    source: SandboxDir,
    images: Path,
    copies: Sequence[str],
) -> None:
    """Make each copy's dir from the fork's disk copy in ``images``; each one
    made is recorded in ``prepared`` (copy id -> images)."""

    async def one(copy_id: str) -> None:
        box = rt._box(check_id(copy_id))
        async with rt._lock(copy_id):
            if box.root.exists() or rt.ocicli.state_dir(copy_id).exists():
                raise InvalidState(f"sandbox {copy_id} already exists")
            prepared[copy_id] = images
            await clone_box(rt, Origin.of_fork(source, images), copy_id, box, phases.ignore)

    results = await asyncio.gather(*(one(c) for c in copies), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def drop(rt: LinuxRuntime, prepared: dict[str, Path], copies: Sequence[str]) -> None:
    """Undo ``prepare`` (the dump failed): nothing of the copies stays."""
    for copy_id in copies:
        if prepared.pop(copy_id, None) is None:
            continue
        errors = await teardown.destroy(rt._target(copy_id))
        if errors:
            log.error("cleanup of fork copy %s: %s", copy_id, errors)


async def clone_box(
    rt: LinuxRuntime,
    origin: Origin,
    sandbox_id: str,
    box: SandboxDir,
    mark: Callable[[str], None],
) -> None:
    """A new sandbox dir like the source's: its own disk copy, mounts, run dir and cgroup."""
    record = SandboxRecord.load(origin.record)
    config = json.loads(origin.config.read_text()) if origin.config.is_file() else None
    if record is None or config is None:
        raise SandboxNotFound(f"the source sandbox of checkpoint {origin.disk.parent} is gone")
    box.root.mkdir(mode=0o711)
    cgroups_path = f"{rt.cgroup_parent.rstrip('/')}/sandbank/{sandbox_id}"
    record = dataclasses.replace(
        record,
        id=sandbox_id,
        cgroups_path=cgroups_path,
        created_at=time.time(),
        **origin.limits,  # type: ignore[arg-type]
    )
    record.save(box.record)
    mark("record")
    await checkpoint.copy_sparse(origin.disk, box.image)
    mark("disk copy")
    lowers = [Path(part) for part in record.lower.split(":")]  # topmost first
    await asyncio.to_thread(rootfs.assemble, box, lowers, record.hostname, phases.ignore)
    mark("rootfs")
    box.run.mkdir(mode=0o755)
    fsflags.seal(box.run)
    config["linux"]["cgroupsPath"] = cgroups_path
    for mount in config["mounts"]:
        if mount.get("destination") == SOCKET_DIR:
            mount["source"] = str(box.run)
    box.config.write_text(json.dumps(config, separators=(",", ":")))
    mark("config")
