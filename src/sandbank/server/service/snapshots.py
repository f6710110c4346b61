"""Snapshots of sandboxes' disks: take, list, look up, delete, restore in place.

A snapshot belongs to the tenant of the sandbox it was taken from and
outlives that sandbox; another tenant's snapshot is 'not found', whether
looked up, restored or created from. Snapshots are addressed by id or by
their name (unique per tenant). The copy is the runtime's (consistent: the
sandbox is frozen while its disk is copied); the record is written only once
the copy is complete, and files without a record are removed at start.

A memory snapshot (``memory=True``) holds the running sandbox's processes and
memory too: a checkpoint left running plus a disk copy of the same freeze
(docs/checkpoints.md). A sandbox created from it, or restored to it in place,
runs on from that moment with an address of its own. Only a running sandbox
can be taken so: a stopped one has nothing in memory, and a paused one's agent
cannot let go of its socket for the checkpoint while frozen (resume it first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from typing import TYPE_CHECKING

from sandbank.errors import (
    CheckpointUnsupported,
    Conflict,
    InvalidState,
    SandbankError,
    SnapshotNotFound,
    ValidationFailed,
)
from sandbank.runtime.base import SandboxSpec
from sandbank.server.service.lifecycle import HAS_DISK, SandboxState, require
from sandbank.server.service.params import CreateParams, Resolved, new_sandbox_id
from sandbank.server.service.policy import resolve
from sandbank.server.store.base import SandboxRecord, SnapshotRecord

if TYPE_CHECKING:
    from sandbank.server.service.sandboxes import SandboxService

log = logging.getLogger(__name__)

S = SandboxState

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SnapshotService:
    def __init__(self, service: SandboxService) -> None:
        self._svc = service

    async def take(
        self, tenant: str, sandbox_id: str, name: str | None, memory: bool = False
    ) -> SnapshotRecord:
        svc = self._svc
        if name is not None and not _NAME.match(name):
            raise ValidationFailed(
                f"snapshot name {name!r} must be 1-128 of [A-Za-z0-9_.-], starting with a "
                "letter or digit",
                field="name",
            )
        snapshot_id = "snap" + new_sandbox_id()
        if name is not None and await svc._store.snapshot_by_name(tenant, name) is not None:
            raise Conflict(f"a snapshot named {name!r} exists already; pick another name")
        async with svc._lock(sandbox_id):
            record = await svc.get(tenant, sandbox_id)
            require(record.status, HAS_DISK, "snapshot", sandbox_id)
            if memory:
                self._memory_supported()
                if record.status == S.STOPPED:
                    raise InvalidState(
                        f"sandbox {sandbox_id} is stopped: it has nothing in memory to "
                        "snapshot; take a snapshot without memory, or start it first",
                        state=record.status,
                        allowed_states=[S.RUNNING.value],
                    )
                require(record.status, frozenset({S.RUNNING}), "snapshot the memory of", sandbox_id)
                size = await svc._runtime.snapshot_memory(sandbox_id, snapshot_id)
            else:
                size = await svc._runtime.snapshot(sandbox_id, snapshot_id)
            snapshot = SnapshotRecord(
                id=snapshot_id,
                tenant=tenant,
                name=name or snapshot_id,
                sandbox_id=sandbox_id,
                template=record.template,
                disk_gb=record.disk_gb,
                size_bytes=size,
                created_at=svc._clock(),
                memory=memory,
            )
            try:
                await svc._store.insert_snapshot(snapshot)
            except BaseException:
                await svc._runtime.delete_snapshot(snapshot_id)
                raise
        return snapshot

    async def resolve_create(self, tenant: str, params: CreateParams) -> tuple[Resolved, str]:
        """A create from a snapshot: its template and disk size, and its id."""
        snap = await self.get(tenant, params.snapshot or "")
        if params.disk_gb not in (None, snap.disk_gb):
            raise ValidationFailed(
                f"snapshot {snap.id} is of a {snap.disk_gb} GB disk; disk_gb cannot differ",
                field="disk_gb",
            )
        changed = dataclasses.replace(params, template=snap.template, disk_gb=snap.disk_gb)
        if snap.memory:
            self._memory_supported()
            # The processes need the room they had: the source's size unless asked otherwise.
            source = await self._svc._store.get_sandbox(snap.sandbox_id)
            if source is not None:
                vcpu, memory_mb = params.vcpu, params.memory_mb
                changed = dataclasses.replace(
                    changed,
                    vcpu=source.vcpu if vcpu is None else vcpu,
                    memory_mb=source.memory_mb if memory_mb is None else memory_mb,
                )
        return resolve(self._svc.limits, changed), snap.id

    async def start_copy(self, snapshot_id: str, spec: SandboxSpec) -> None:
        """Make the new sandbox ``spec.id`` from the snapshot: from its memory
        image (running on from that moment), or on a copy of its disk, started."""
        runtime = self._svc._runtime
        snap = await self._svc._store.get_snapshot(snapshot_id)
        if snap is not None and snap.memory:
            await runtime.restore_memory(snapshot_id, spec)
            return
        await runtime.restore(spec.id, snapshot_id)
        await runtime.start_sandbox(spec)

    def _memory_supported(self) -> None:
        problem = self._svc._runtime.checkpoint_problem()
        if problem is not None:
            raise CheckpointUnsupported(
                f"memory snapshots are not available on this host: {problem}; a snapshot "
                "without memory works"
            )

    async def get(self, tenant: str, ref: str) -> SnapshotRecord:
        """By id, else by name; another tenant's is not found."""
        svc = self._svc
        found = await svc._store.get_snapshot(ref)
        if found is None or found.tenant != tenant:
            found = await svc._store.snapshot_by_name(tenant, ref)
        if found is None:
            raise SnapshotNotFound(f"snapshot {ref} does not exist", snapshot=ref)
        return found

    async def list_all(self, tenant: str, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        return await self._svc._store.list_snapshots(tenant, sandbox_id)

    async def delete(self, tenant: str, ref: str) -> None:
        snapshot = await self.get(tenant, ref)
        # Record first: files without a record are removed at the next start.
        await self._svc._store.delete_snapshot(snapshot.id)
        await self._svc._runtime.delete_snapshot(snapshot.id)

    async def restore(self, tenant: str, sandbox_id: str, ref: str) -> SandboxRecord:
        """Put the sandbox's disk back to the snapshot. A running or paused sandbox
        is stopped, restored and started again (its processes begin anew); a
        stopped one stays stopped."""
        svc = self._svc
        snapshot = await self.get(tenant, ref)
        async with svc._lock(sandbox_id):
            record = await svc.get(tenant, sandbox_id)
            require(record.status, HAS_DISK, "restore", sandbox_id)
            if (snapshot.template, snapshot.disk_gb) != (record.template, record.disk_gb):
                raise Conflict(
                    f"snapshot {snapshot.id} is of a {snapshot.disk_gb} GB {snapshot.template!r} "
                    f"disk; sandbox {sandbox_id} has a {record.disk_gb} GB {record.template!r} "
                    "one: create a new sandbox from the snapshot instead",
                    snapshot=snapshot.id,
                )
            if snapshot.memory:
                return await self._restore_memory(record, snapshot)
            was = record.status
            record = await svc.lifecycle.stop_locked(record)
            try:
                await svc._runtime.restore(sandbox_id, snapshot.id)
            except SandbankError as exc:
                log.warning("restore of %s to %s failed: %s", sandbox_id, snapshot.id, exc)
                if was != S.STOPPED:
                    await svc.lifecycle.start_locked(record)
                raise
            if was != S.STOPPED:
                record = await svc.lifecycle.start_locked(record)
        return record

    async def _restore_memory(
        self, record: SandboxRecord, snapshot: SnapshotRecord
    ) -> SandboxRecord:
        """Replace the sandbox's container and disk by the snapshot's (same id,
        new address); it is running afterwards, whatever it was. If the restore
        fails the sandbox's old disk is gone: it is left in ``error``."""
        svc = self._svc
        self._memory_supported()
        await svc._runtime.destroy(record.id)
        try:
            await svc._runtime.restore_memory(snapshot.id, svc.lifecycle.spec_of(record))
        except BaseException as exc:
            log.warning("memory restore of %s to %s failed: %s", record.id, snapshot.id, exc)
            with contextlib.suppress(SandbankError):
                await svc._runtime.destroy(record.id)
            await svc._store.update_sandbox(
                record.id,
                {"status": S.ERROR, "error": f"restore failed: {exc}", "updated_at": svc._clock()},
            )
            raise
        updated = await svc._store.update_sandbox(
            record.id, {"status": S.RUNNING, "error": None, "updated_at": svc._clock()}
        )
        assert updated is not None
        svc.idle.touch(record.id)
        return updated

    async def cleanup_orphans(self) -> list[str]:
        """Remove snapshot files without a record (a take or delete cut short)."""
        svc = self._svc
        known = {s.id for s in await svc._store.list_snapshots(None)}
        orphans = sorted((await svc._runtime.snapshot_ids()) - known)
        for snapshot_id in orphans:
            await svc._runtime.delete_snapshot(snapshot_id)
        return orphans
