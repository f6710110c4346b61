"""/v1/sandboxes/{id}: stop, start, restart, and PATCH (live resize, idle policy)."""

from __future__ import annotations

from fastapi import APIRouter

from sandbank.protocol.api import SandboxOut, UpdateSandboxRequest
from sandbank.server.api.convert import sandbox_out
from sandbank.server.api.deps import Caller, SandboxId, Services, Svc
from sandbank.server.service.lifecycle_ops import UpdateParams
from sandbank.server.store.base import SandboxRecord

router = APIRouter(prefix="/v1/sandboxes", tags=["lifecycle"])


async def _out(svc: Services, record: SandboxRecord) -> SandboxOut:
    out = sandbox_out(record, svc.base_url, svc.terminal_token(record.id))
    out.disk_bytes = await svc.sandboxes.lifecycle.disk_bytes(record)
    return out


@router.post("/{sandbox_id}/stop", response_model=SandboxOut)
async def stop_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """End every process and free memory, CPU and network; the disk is kept.
    Idempotent; a paused sandbox is stopped as it is."""
    return await _out(svc, await svc.sandboxes.lifecycle.stop(caller.tenant, sandbox_id))


@router.post("/{sandbox_id}/start", response_model=SandboxOut)
async def start_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Start a stopped sandbox on its disk, processes from scratch; idempotent."""
    return await _out(svc, await svc.sandboxes.lifecycle.start(caller.tenant, sandbox_id))


@router.post("/{sandbox_id}/restart", response_model=SandboxOut)
async def restart_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Stop (if it runs) and start again."""
    return await _out(svc, await svc.sandboxes.lifecycle.restart(caller.tenant, sandbox_id))


@router.patch("/{sandbox_id}", response_model=SandboxOut)
async def update_sandbox(
    sandbox_id: SandboxId, body: UpdateSandboxRequest, svc: Svc, caller: Caller
) -> SandboxOut:
    """Resize a running (live) or stopped sandbox; change its idle policy."""
    params = UpdateParams(
        vcpu=body.vcpu,
        memory_mb=body.memory_mb,
        idle_timeout=body.idle_timeout,
        on_timeout=body.on_timeout,
        auto_resume=body.auto_resume,
    )
    record = await svc.sandboxes.lifecycle.update(caller.tenant, sandbox_id, params)
    return await _out(svc, record)
