"""The fake runtime's memory snapshots: a deep copy of the fake sandbox (its
files and its jobs, which stand for its processes and memory) kept by
snapshot id, next to the disk-only copy every snapshot has."""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

from sandbank.errors import (
    CheckpointUnsupported,
    InvalidState,
    SandboxUnavailable,
    SnapshotNotFound,
)
from sandbank.runtime.base import SandboxSpec

if TYPE_CHECKING:
    from sandbank.runtime.fake import FakeSandbox

#: What the fake counts for a sandbox's memory in a snapshot's size.
MEMORY_BYTES = 4096


class FakeMemorySnapshots:
    boxes: dict[str, FakeSandbox]
    snapshots: dict[str, tuple[dict[str, bytes], set[str]]]
    in_use: dict[str, int]
    checkpoint_unsupported: str | None

    @property
    def memory_images(self) -> dict[str, FakeSandbox]:
        """Snapshot id -> the sandbox as it was (memory snapshots only)."""
        images: dict[str, Any] = self.__dict__.setdefault("_memory_images", {})
        return images

    async def snapshot_memory(self, sandbox_id: str, snapshot_id: str) -> int:
        if self.checkpoint_unsupported:
            raise CheckpointUnsupported(self.checkpoint_unsupported)
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        if box.paused:
            raise InvalidState(f"sandbox {sandbox_id} is paused; resume it first")
        self.snapshots[snapshot_id] = (dict(box.files), set(box.dirs))
        self.memory_images[snapshot_id] = copy.deepcopy(box)
        return sum(len(v) for v in box.files.values()) + MEMORY_BYTES

    async def restore_memory(self, snapshot_id: str, spec: SandboxSpec) -> None:
        saved = self.memory_images.get(snapshot_id)
        if saved is None:
            raise SnapshotNotFound(f"snapshot {snapshot_id} has no memory image")
        if spec.id in self.boxes:
            raise InvalidState(f"sandbox {spec.id} still exists; destroy it first")
        box = copy.deepcopy(saved)
        box.spec = dataclasses.replace(
            saved.spec,
            id=spec.id,
            vcpu=spec.vcpu,
            memory_mb=spec.memory_mb,
            pids_limit=spec.pids_limit,
            network=spec.network,
        )
        box.alive, box.paused = True, False
        self.boxes[spec.id] = box
        self.in_use[box.spec.template] = self.in_use.get(box.spec.template, 0) + 1
