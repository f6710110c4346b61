"""Records and runtime results into wire models."""

from __future__ import annotations

from datetime import UTC, datetime

from sandbank.protocol.api import ExecRequest, FileEntryOut, NetworkOut, SandboxOut
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import FileEntry
from sandbank.server.service.params import ExecParams, short_id
from sandbank.server.store.base import SandboxRecord


def sandbox_out(
    record: SandboxRecord, base_url: str, terminal_token: str | None = None
) -> SandboxOut:
    """``terminal_token``: for the owner, whose ``terminal_url`` then opens a terminal."""
    terminal_url = f"{base_url}/terminal/{record.id}"
    if terminal_token is not None:
        terminal_url += f"?token={terminal_token}"
    return SandboxOut(
        id=record.id,
        short_id=short_id(record.id),
        name=record.name,
        status=record.status,
        template=record.template,
        vcpu=record.vcpu,
        memory_mb=record.memory_mb,
        disk_gb=record.disk_gb,
        region=record.region,
        metadata=record.metadata,
        created_at=record.created_at,
        expires_at=record.expires_at,
        terminal_url=terminal_url,
        killed_at=record.killed_at,
        kill_reason=record.kill_reason,
        network=network_out(record),
        idle_timeout=record.idle_timeout,
        on_timeout=record.on_timeout,
        auto_resume=record.auto_resume,
        error=record.error,
    )


def network_out(record: SandboxRecord) -> NetworkOut:
    policy = NetworkPolicy.from_dict(record.network)
    return NetworkOut(
        allow_internet_access=policy.allow_internet_access,
        allow_out=list(policy.allow_out),
        deny_out=list(policy.deny_out),
    )


def entry_out(entry: FileEntry) -> FileEntryOut:
    return FileEntryOut(
        name=entry.name,
        path=entry.path,
        type=entry.type,
        size=entry.size,
        mode=entry.mode,
        permissions=entry.permissions,
        owner=entry.owner,
        group=entry.group,
        modified_at=datetime.fromtimestamp(entry.modified_at, UTC),
        symlink_target=entry.symlink_target,
    )


def exec_params(body: ExecRequest) -> ExecParams:
    """The one reading of an exec body, for the plain and the streamed exec."""
    return ExecParams(
        cmd=body.cmd,
        command=body.command,
        env=body.env or {},
        cwd=body.cwd,
        user=body.user,
        timeout=body.timeout,
        stdin=body.stdin.encode() if body.stdin is not None else None,
    )
