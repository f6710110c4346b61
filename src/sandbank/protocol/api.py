"""Wire models of the ``/v1`` REST API (server side; the SDK reads plain JSON).

Strict at the edge: unknown fields are rejected, ranges are checked by the
service against the operator's limits so the message can name them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from sandbank.protocol.network import NetworkPolicy, make_policy

SANDBOX_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return env
    for key, value in env.items():
        if not ENV_KEY_RE.match(key):
            raise ValueError(f"env name {key!r} is not a valid variable name")
        if "\0" in value:
            raise ValueError(f"env value of {key!r} contains a NUL byte")
    return env


class NetworkBody(Strict):
    """Egress lists: IPv4 addresses, CIDRs (``0.0.0.0/0`` is all traffic),
    domain names or ``*.`` wildcards; ``allow_out`` wins over ``deny_out``.
    See ``sandbank.protocol.network``."""

    allow_out: list[str] | None = None
    deny_out: list[str] | None = None


def _policy(allow_internet_access: bool, body: NetworkBody | None) -> NetworkPolicy:
    """The checked policy; ValueError (a 422 naming the entry) when it is not valid."""
    body = body or NetworkBody()
    return make_policy(allow_internet_access, body.allow_out or (), body.deny_out or ())


class CreateSandboxRequest(Strict):
    template: str = "base"
    name: str | None = Field(default=None, max_length=128)
    vcpu: float | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    region: str | None = None
    env: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    #: Seconds until the sandbox is killed.
    timeout: int | None = None
    #: False: no egress at all (no DNS either).
    allow_internet_access: bool = True
    network: NetworkBody | None = None
    #: Id or name of a snapshot: the new sandbox starts on a copy of its disk
    #: (and gets its template and disk size).
    snapshot: str | None = None
    #: Seconds without any operation on the sandbox before ``on_timeout``.
    idle_timeout: StrictInt | None = None
    on_timeout: Literal["kill", "pause", "hibernate"] | None = None
    #: Operations on a paused sandbox resume it instead of answering 409.
    auto_resume: bool = False

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 64:
            raise ValueError("at most 64 metadata entries")
        for key, item in value.items():
            if not METADATA_KEY_RE.match(key):
                raise ValueError(f"metadata key {key!r} must be 1-128 of [A-Za-z0-9_.-/]")
            if len(item) > 1024:
                raise ValueError(f"metadata value of {key!r} is longer than 1024 characters")
        return value

    @model_validator(mode="after")
    def _one_cpu(self) -> CreateSandboxRequest:
        if self.vcpu is not None and self.cpu is not None and self.vcpu != self.cpu:
            raise ValueError("give vcpu or its alias cpu, not both with different values")
        return self

    @model_validator(mode="after")
    def _network(self) -> CreateSandboxRequest:
        self.network_policy()
        return self

    def network_policy(self) -> NetworkPolicy:
        return _policy(self.allow_internet_access, self.network)


class NetworkRequest(Strict):
    """``PUT /v1/sandboxes/{id}/network``: the whole policy, replacing the old one."""

    allow_internet_access: bool = True
    allow_out: list[str] | None = None
    deny_out: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkRequest:
        self.policy()
        return self

    def policy(self) -> NetworkPolicy:
        body = NetworkBody(allow_out=self.allow_out, deny_out=self.deny_out)
        return _policy(self.allow_internet_access, body)


class NetworkOut(BaseModel):
    allow_internet_access: bool = True
    allow_out: list[str] = Field(default_factory=list)
    deny_out: list[str] = Field(default_factory=list)


class SandboxOut(BaseModel):
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
    network: NetworkOut = Field(default_factory=NetworkOut)
    idle_timeout: int | None = None
    on_timeout: str = "kill"
    auto_resume: bool = False
    #: Bytes the sandbox's disk image occupies on the host (single-sandbox answers).
    disk_bytes: int | None = None
    #: Why the last start or stop failed, if it did.
    error: str | None = None


class UpdateSandboxRequest(Strict):
    """``PATCH /v1/sandboxes/{id}``: live resize (running or stopped) and the idle
    policy; fields left out are unchanged. ``idle_timeout: 0`` clears it."""

    vcpu: float | None = None
    memory_mb: StrictInt | None = None
    idle_timeout: StrictInt | None = None
    on_timeout: Literal["kill", "pause", "hibernate"] | None = None
    auto_resume: bool | None = None


class SnapshotRequest(Strict):
    name: str | None = Field(default=None, max_length=128)
    #: Also the running sandbox's processes and memory (a checkpoint).
    memory: StrictBool = False


class RestoreRequest(Strict):
    #: Id or name of the snapshot.
    snapshot: str


class SnapshotOut(BaseModel):
    id: str
    name: str
    sandbox_id: str
    template: str
    disk_gb: int
    size_bytes: int
    created_at: datetime
    #: Holds processes and memory too; ``size_bytes`` counts disk and memory.
    memory: bool = False


class SnapshotList(BaseModel):
    data: list[SnapshotOut]


class PreviewOut(BaseModel):
    """How to reach a port of the sandbox through the server: fill in ``{port}``.
    The token is private to the sandbox's owner; the URLs carry it."""

    token: str
    url: str
    host_url: str


class SandboxList(BaseModel):
    data: list[SandboxOut]
    next_cursor: str | None = None


class TimeoutRequest(Strict):
    timeout: int


class ForkRequest(Strict):
    """``POST /v1/sandboxes/{id}/fork``: how many copies of the running sandbox."""

    count: int = 1


class ForkOut(BaseModel):
    data: list[SandboxOut]


class ExecRequest(Strict):
    cmd: list[Annotated[str, Field(max_length=131072)]] | None = None
    command: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: Literal["user", "root"] = "user"
    #: Seconds; 0 means no limit.
    timeout: float = 60
    stdin: str | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(value)

    @model_validator(mode="after")
    def _one_form(self) -> ExecRequest:
        if (self.cmd is None) == (self.command is None):
            raise ValueError("give exactly one of cmd (an argv list) or command (a shell string)")
        if self.cmd is not None and not self.cmd:
            raise ValueError("cmd must not be empty")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0 (0 means no limit)")
        return self


class ExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool
    #: True when stdout or stderr went past the server's output cap and was cut.
    truncated: bool = False


class FileEntryOut(BaseModel):
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: datetime
    symlink_target: str | None = None


class FileList(BaseModel):
    entries: list[FileEntryOut]


class MoveRequest(Strict):
    source: str
    destination: str


class MkdirRequest(Strict):
    path: str


class MkdirOut(BaseModel):
    created: bool
    entry: FileEntryOut


class MetricsOut(BaseModel):
    cpu_percent: float
    cpu_usage_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int
    pids: int
    pids_limit: int
    timestamp: datetime


class CreateKeyRequest(Strict):
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str | None = Field(default=None, max_length=128)
    admin: bool = False


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str | None
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str


class QuotaBody(Strict):
    max_sandboxes: int | None = Field(default=None, ge=0)
    max_vcpu: float | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)


class ErrorOut(BaseModel):
    code: str
    message: str
