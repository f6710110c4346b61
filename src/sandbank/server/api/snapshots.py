"""Snapshots: take (``POST /v1/sandboxes/{id}/snapshots``), restore in place
(``POST /v1/sandboxes/{id}/restore``), and ``/v1/snapshots`` to list, get and
delete them. Creating a sandbox from one is ``{"snapshot": ...}`` in the create body."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sandbank.protocol.api import (
    RestoreRequest,
    SandboxOut,
    SnapshotList,
    SnapshotOut,
    SnapshotRequest,
)
from sandbank.server.api.convert import sandbox_out
from sandbank.server.api.deps import Caller, SandboxId, Svc
from sandbank.server.store.base import SnapshotRecord

router = APIRouter(tags=["snapshots"])


def snapshot_out(record: SnapshotRecord) -> SnapshotOut:
    return SnapshotOut(
        id=record.id,
        name=record.name,
        sandbox_id=record.sandbox_id,
        template=record.template,
        disk_gb=record.disk_gb,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        memory=record.memory,
    )


@router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotOut)
async def take_snapshot(
    sandbox_id: SandboxId, svc: Svc, caller: Caller, body: SnapshotRequest | None = None
) -> SnapshotOut:
    """A consistent copy of the sandbox's disk (it is frozen for the copy); with
    ``memory``, of its processes and memory too."""
    name = body.name if body is not None else None
    memory = body.memory if body is not None else False
    taken = await svc.sandboxes.snapshots.take(caller.tenant, sandbox_id, name, memory)
    return snapshot_out(taken)


@router.get("/v1/sandboxes/{sandbox_id}/snapshots", response_model=SnapshotList)
async def sandbox_snapshots(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SnapshotList:
    items = await svc.sandboxes.snapshots.list_all(caller.tenant, sandbox_id)
    return SnapshotList(data=[snapshot_out(s) for s in items])


@router.post("/v1/sandboxes/{sandbox_id}/restore", response_model=SandboxOut)
async def restore_snapshot(
    sandbox_id: SandboxId, body: RestoreRequest, svc: Svc, caller: Caller
) -> SandboxOut:
    """Put the sandbox's disk back to a snapshot; a running one is restarted on it."""
    record = await svc.sandboxes.snapshots.restore(caller.tenant, sandbox_id, body.snapshot)
    out = sandbox_out(record, svc.base_url, svc.terminal_token(record.id))
    out.disk_bytes = await svc.sandboxes.lifecycle.disk_bytes(record)
    return out


@router.get("/v1/snapshots", response_model=SnapshotList)
async def list_snapshots(svc: Svc, caller: Caller) -> SnapshotList:
    items = await svc.sandboxes.snapshots.list_all(caller.tenant)
    return SnapshotList(data=[snapshot_out(s) for s in items])


@router.get("/v1/snapshots/{ref}", response_model=SnapshotOut)
async def get_snapshot(ref: str, svc: Svc, caller: Caller) -> SnapshotOut:
    return snapshot_out(await svc.sandboxes.snapshots.get(caller.tenant, ref))


@router.delete("/v1/snapshots/{ref}", status_code=204)
async def delete_snapshot(ref: str, svc: Svc, caller: Caller) -> Response:
    await svc.sandboxes.snapshots.delete(caller.tenant, ref)
    return Response(status_code=204)
