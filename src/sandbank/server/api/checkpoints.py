"""/v1/sandboxes/{id}/hibernate, /wake and /fork (see docs/checkpoints.md)."""

from __future__ import annotations

from fastapi import APIRouter

from sandbank.protocol.api import ForkOut, ForkRequest, SandboxOut
from sandbank.server.api.convert import sandbox_out
from sandbank.server.api.deps import Caller, SandboxId, Svc

router = APIRouter(prefix="/v1/sandboxes", tags=["checkpoints"])


@router.post("/{sandbox_id}/hibernate", response_model=SandboxOut)
async def hibernate_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Save a running sandbox's processes and memory to disk and stop it: it
    holds no memory or CPU until woken. Idempotent."""
    record = await svc.sandboxes.checkpoints.hibernate(caller.tenant, sandbox_id)
    return sandbox_out(record, svc.base_url)


@router.post("/{sandbox_id}/wake", response_model=SandboxOut)
async def wake_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Restore a hibernated sandbox where it left off. Idempotent."""
    record = await svc.sandboxes.checkpoints.wake(caller.tenant, sandbox_id)
    return sandbox_out(record, svc.base_url)


@router.post("/{sandbox_id}/fork", status_code=201, response_model=ForkOut)
async def fork_sandbox(
    sandbox_id: SandboxId, body: ForkRequest, svc: Svc, caller: Caller
) -> ForkOut:
    """``count`` new sandboxes with the running processes, memory and files of
    this one, each with its own id, disk and address; this one keeps running."""
    records = await svc.sandboxes.checkpoints.fork(caller.tenant, sandbox_id, body.count)
    return ForkOut(data=[sandbox_out(r, svc.base_url) for r in records])
