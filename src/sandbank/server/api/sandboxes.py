"""/v1/sandboxes: create, list, get, delete, timeout, network, exec, metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request, Response

from sandbank.errors import ValidationFailed
from sandbank.protocol.api import (
    CreateSandboxRequest,
    ExecOut,
    ExecRequest,
    MetricsOut,
    NetworkOut,
    NetworkRequest,
    SandboxList,
    SandboxOut,
    TimeoutRequest,
)
from sandbank.server.api.convert import exec_params, network_out, sandbox_out
from sandbank.server.api.deps import Caller, SandboxId, Svc
from sandbank.server.service.params import CreateParams

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


@router.post("", status_code=201, response_model=SandboxOut)
async def create_sandbox(body: CreateSandboxRequest, svc: Svc, caller: Caller) -> SandboxOut:
    record = await svc.sandboxes.create(
        caller.tenant,
        CreateParams(
            template=body.template,
            name=body.name,
            vcpu=body.vcpu if body.vcpu is not None else body.cpu,
            memory_mb=body.memory_mb,
            disk_gb=body.disk_gb,
            region=body.region,
            env=body.env or {},
            metadata=body.metadata or {},
            timeout=body.timeout,
            network=body.network_policy(),
            snapshot=body.snapshot,
            idle_timeout=body.idle_timeout,
            on_timeout=body.on_timeout,
            auto_resume=body.auto_resume,
        ),
    )
    return sandbox_out(record, svc.base_url, svc.terminal_token(record.id))


@router.get("", response_model=SandboxList)
async def list_sandboxes(
    request: Request,
    svc: Svc,
    caller: Caller,
    status: str | None = None,
    limit: int = Query(100),
    cursor: str | None = None,
) -> SandboxList:
    metadata: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        match = _METADATA_PARAM.match(key)
        if match:
            metadata[match.group(1)] = value
        elif key not in ("status", "limit", "cursor"):
            raise ValidationFailed(
                f"unknown query parameter {key!r}; filters are status, metadata[key], "
                "limit and cursor",
                field=key,
            )
    page = await svc.sandboxes.list_sandboxes(
        caller.tenant, status=status, metadata=metadata, limit=limit, cursor=cursor
    )
    return SandboxList(
        data=[sandbox_out(r, svc.base_url, svc.terminal_token(r.id)) for r in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    record = await svc.sandboxes.get(caller.tenant, sandbox_id)
    out = sandbox_out(record, svc.base_url, svc.terminal_token(sandbox_id))
    out.disk_bytes = await svc.sandboxes.lifecycle.disk_bytes(record)
    return out


@router.delete("/{sandbox_id}", status_code=204)
async def delete_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> Response:
    await svc.sandboxes.kill(caller.tenant, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout", response_model=SandboxOut)
async def set_timeout(
    sandbox_id: SandboxId, body: TimeoutRequest, svc: Svc, caller: Caller
) -> SandboxOut:
    record = await svc.sandboxes.set_timeout(caller.tenant, sandbox_id, body.timeout)
    return sandbox_out(record, svc.base_url, svc.terminal_token(record.id))


@router.post("/{sandbox_id}/pause", response_model=SandboxOut)
async def pause_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Freeze every process of a running sandbox (memory kept, no CPU); idempotent."""
    return sandbox_out(
        await svc.sandboxes.pause(caller.tenant, sandbox_id),
        svc.base_url,
        svc.terminal_token(sandbox_id),
    )


@router.post("/{sandbox_id}/resume", response_model=SandboxOut)
async def resume_sandbox(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> SandboxOut:
    """Thaw a paused sandbox; idempotent."""
    return sandbox_out(
        await svc.sandboxes.resume(caller.tenant, sandbox_id),
        svc.base_url,
        svc.terminal_token(sandbox_id),
    )


@router.get("/{sandbox_id}/network", response_model=NetworkOut)
async def get_network(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> NetworkOut:
    return network_out(await svc.sandboxes.get(caller.tenant, sandbox_id))


@router.put("/{sandbox_id}/network", response_model=NetworkOut)
async def set_network(
    sandbox_id: SandboxId, body: NetworkRequest, svc: Svc, caller: Caller
) -> NetworkOut:
    record = await svc.sandboxes.set_network(caller.tenant, sandbox_id, body.policy())
    return network_out(record)


@router.post("/{sandbox_id}/exec", response_model=ExecOut)
async def exec_command(
    sandbox_id: SandboxId, body: ExecRequest, svc: Svc, caller: Caller
) -> ExecOut:
    result = await svc.sandboxes.exec(
        caller.tenant,
        sandbox_id,
        exec_params(body),
    )
    return ExecOut(
        exit_code=result.exit_code,
        stdout=result.stdout.decode("utf-8", "replace"),
        stderr=result.stderr.decode("utf-8", "replace"),
        duration_ms=round(result.duration_ms, 3),
        timed_out=result.timed_out,
        truncated=result.truncated,
    )


@router.get("/{sandbox_id}/metrics", response_model=MetricsOut)
async def sandbox_metrics(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> MetricsOut:
    usage = await svc.sandboxes.usage(caller.tenant, sandbox_id)
    return MetricsOut(
        cpu_percent=round(usage.cpu_percent, 2),
        cpu_usage_seconds=usage.cpu_usage_seconds,
        memory_bytes=usage.memory_bytes,
        memory_limit_bytes=usage.memory_limit_bytes,
        disk_bytes=usage.disk_bytes,
        disk_limit_bytes=usage.disk_limit_bytes,
        pids=usage.pids,
        pids_limit=usage.pids_limit,
        timestamp=datetime.now(UTC),
    )
