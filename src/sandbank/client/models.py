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
    #: Seconds without activity before ``on_timeout`` (``kill`` or ``pause``).
    idle_timeout: int | None = None
    on_timeout: str = "kill"
    auto_resume: bool = False
    #: Host bytes of its disk image (in answers about this one sandbox).
    disk_bytes: int | None = None
    #: Why the last start or stop failed, if it did.
    error: str | None = None

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
            idle_timeout=data.get("idle_timeout"),
            on_timeout=data.get("on_timeout") or "kill",
            auto_resume=bool(data.get("auto_resume", False)),
            disk_bytes=data.get("disk_bytes"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class SnapshotInfo(_Snapshot):
    """A copy of a sandbox's disk; restore it or create sandboxes from it."""

    id: str
    name: str
    sandbox_id: str
    template: str
    disk_gb: int
    size_bytes: int
    created_at: datetime
    #: Holds the sandbox's processes and memory too.
    memory: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(
            id=data["id"],
            name=data.get("name", data["id"]),
            sandbox_id=data.get("sandbox_id", ""),
            template=data.get("template", ""),
            disk_gb=int(data.get("disk_gb", 0)),
            size_bytes=int(data.get("size_bytes", 0)),
            created_at=_datetime(data["created_at"]),
            memory=bool(data.get("memory", False)),
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
class ProcessInfo(_Snapshot):
    """A process started in a sandbox (in the background or by a streamed
    command), running or ended in the last 10 minutes."""

    pid: int
    tag: str | None
    #: The argv it runs (a shell string runs as ``sh -c``).
    cmd: list[str]
    cwd: str
    user: str
    running: bool
    started_at: datetime | None
    ended_at: datetime | None = None
    exit_code: int | None = None
    #: The signal that ended it (``exit_code`` is then 128+N).
    signal: int | None = None
    timed_out: bool = False
    #: ``none``, ``bytes``, ``open`` or ``closed``.
    stdin: str = "none"
    #: Output bytes kept so far, both streams.
    output_bytes: int = 0
    #: The variables given with the command (the sandbox's own are not shown).
    env: dict[str, str] = field(default_factory=dict)
    #: Names of every variable it was started with.
    env_keys: list[str] = field(default_factory=list)
    #: Streams that hit the output cap.
    truncated: list[str] = field(default_factory=list)
    #: ``background`` or ``foreground`` (a streamed command, killed with its client).
    kind: str = "background"

    @property
    def args(self) -> list[str]:
        """The arguments after the program (``cmd[1:]``)."""
        return self.cmd[1:]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(data["pid"]),
            tag=data.get("tag"),
            cmd=list(data.get("cmd") or []),
            cwd=str(data.get("cwd", "")),
            user=str(data.get("user", "")),
            running=bool(data.get("running")),
            started_at=_optional_datetime(data.get("started_at")),
            ended_at=_optional_datetime(data.get("ended_at")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            timed_out=bool(data.get("timed_out", False)),
            stdin=str(data.get("stdin") or "none"),
            output_bytes=int(data.get("output_bytes") or 0),
            env=dict(data.get("env") or {}),
            env_keys=list(data.get("env_keys") or []),
            truncated=list(data.get("truncated") or []),
            kind=str(data.get("kind") or "background"),
        )



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
