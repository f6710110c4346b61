"""What the SDK hands back: frozen snapshots of the server's JSON answers.

One set of classes serves the async SDK and its sync twin, so a
``SandboxInfo`` is the same type whichever client produced it. Parsing is
lenient about fields it does not know, so a newer server keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _optional_datetime(value: Any) -> datetime | None:
    return None if value is None else _datetime(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


class _Snapshot:
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (datetimes as ISO 8601 strings)."""
        data: dict[str, Any] = _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]
        return data


#: ``deny_out=[ALL_TRAFFIC]`` with an ``allow_out`` list: only the allowed get out.
ALL_TRAFFIC = "0.0.0.0/0"


@dataclass(frozen=True)
class NetworkInfo(_Snapshot):
    """A sandbox's egress policy: ``allow_out`` wins over ``deny_out``."""

    allow_internet_access: bool = True
    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NetworkInfo:
        data = data or {}
        return cls(
            allow_internet_access=bool(data.get("allow_internet_access", True)),
            allow_out=list(data.get("allow_out") or []),
            deny_out=list(data.get("deny_out") or []),
        )


@dataclass(frozen=True)
class SandboxInfo(_Snapshot):
    id: str
    short_id: str
    name: str
    status: str
    template: str
    vcpu: float
    memory_mb: int
    disk_gb: int
    region: str
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime | None
    terminal_url: str
    killed_at: datetime | None = None
    kill_reason: str | None = None
    network: NetworkInfo = field(default_factory=NetworkInfo)

    @property
    def sandbox_id(self) -> str:
        return self.id

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=data["id"],
            short_id=data.get("short_id", data["id"]),
            name=data.get("name", ""),
            status=data["status"],
            template=data.get("template", ""),
            vcpu=float(data.get("vcpu", 0)),
            memory_mb=int(data.get("memory_mb", 0)),
            disk_gb=int(data.get("disk_gb", 0)),
            region=data.get("region", ""),
            metadata=dict(data.get("metadata") or {}),
            created_at=_datetime(data["created_at"]),
            expires_at=_optional_datetime(data.get("expires_at")),
            terminal_url=data.get("terminal_url", ""),
            killed_at=_optional_datetime(data.get("killed_at")),
            kill_reason=data.get("kill_reason"),
            network=NetworkInfo.from_dict(data.get("network")),
        )


@dataclass(frozen=True)
class CommandResult(_Snapshot):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandResult:
        return cls(
            exit_code=int(data["exit_code"]),
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            duration_ms=float(data.get("duration_ms", 0)),
            timed_out=bool(data.get("timed_out", False)),
        )


@dataclass(frozen=True)
class EntryInfo(_Snapshot):
    name: str
    path: str
    #: ``file``, ``dir``, ``symlink`` or ``other``.
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: datetime
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntryInfo:
        return cls(
            name=data["name"],
            path=data["path"],
            type=data["type"],
            size=int(data.get("size", 0)),
            mode=int(data.get("mode", 0)),
            permissions=data.get("permissions", ""),
            owner=data.get("owner", ""),
            group=data.get("group", ""),
            modified_at=_datetime(data["modified_at"]),
            symlink_target=data.get("symlink_target"),
        )


@dataclass(frozen=True)
class SandboxMetrics(_Snapshot):
    cpu_percent: float
    cpu_usage_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int
    pids: int
    pids_limit: int
    timestamp: datetime

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxMetrics:
        return cls(
            cpu_percent=float(data["cpu_percent"]),
            cpu_usage_seconds=float(data["cpu_usage_seconds"]),
            memory_bytes=int(data["memory_bytes"]),
            memory_limit_bytes=int(data["memory_limit_bytes"]),
            disk_bytes=int(data["disk_bytes"]),
            disk_limit_bytes=int(data["disk_limit_bytes"]),
            pids=int(data["pids"]),
            pids_limit=int(data["pids_limit"]),
            timestamp=_datetime(data["timestamp"]),
        )


@dataclass(frozen=True)
class ApiKeyInfo(_Snapshot):
    id: str
    tenant: str
    name: str | None
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None
    #: The secret itself; only present in the answer that created the key.
    key: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKeyInfo:
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            name=data.get("name"),
            prefix=data.get("prefix", ""),
            admin=bool(data.get("admin", False)),
            created_at=_datetime(data["created_at"]),
            revoked_at=_optional_datetime(data.get("revoked_at")),
            key=data.get("key"),
        )


@dataclass(frozen=True)
class TemplateInfo(_Snapshot):
    name: str
    ready: bool
    #: Every other field the server reports about the template.
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateInfo:
        details = {k: v for k, v in data.items() if k not in ("name", "ready")}
        return cls(name=data["name"], ready=bool(data.get("ready", False)), details=details)


@dataclass(frozen=True)
class TemplateBuild(_Snapshot):
    """The outcome of a template build: the template, and whether the cache
    answered (an unchanged spec: nothing was built)."""

    template: TemplateInfo
    cached: bool
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateBuild:
        return cls(
            template=TemplateInfo.from_dict(data["template"]),
            cached=bool(data.get("cached", False)),
            seconds=float(data.get("seconds", 0.0)),
        )
