"""The store contract. The service depends on this Protocol only, so a
PostgreSQL store can follow the SQLite one without touching callers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    tenant: str
    name: str
    status: str
    template: str
    vcpu: float
    memory_mb: int
    disk_gb: int
    region: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    killed_at: datetime | None = None
    kill_reason: str | None = None
    error: str | None = None
    #: The egress policy, as ``NetworkPolicy.to_dict``; empty: the default.
    network: dict[str, Any] = field(default_factory=dict)
    #: Seconds without activity after which ``on_timeout`` happens; None: never.
    idle_timeout: int | None = None
    #: ``kill`` or ``pause``: what the idle timeout does.
    on_timeout: str = "kill"
    #: Operations on a paused sandbox resume it instead of answering 409.
    auto_resume: bool = False
    #: Last API, exec or preview activity, as last flushed (see service/idle.py).
    last_activity_at: datetime | None = None


@dataclass(frozen=True)
class SnapshotRecord:
    """A copy of a sandbox's writable layer; independent of the sandbox once made."""

    id: str
    tenant: str
    name: str
    sandbox_id: str
    template: str
    disk_gb: int
    size_bytes: int
    created_at: datetime
    #: Holds the sandbox's processes and memory too (a checkpoint), not only its disk.
    memory: bool = False


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    tenant: str
    name: str | None
    prefix: str
    key_hash: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class QuotaRecord:
    tenant: str
    max_sandboxes: int | None = None
    max_vcpu: float | None = None
    max_memory_mb: int | None = None


@dataclass(frozen=True)
class TenantUsage:
    sandboxes: int
    vcpu: float
    memory_mb: int


@dataclass(frozen=True)
class Page:
    items: list[SandboxRecord]
    next_cursor: str | None


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema."""
        ...

    async def close(self) -> None: ...

    # sandboxes
    async def insert_sandbox(self, record: SandboxRecord) -> None: ...

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...

    async def update_sandbox(
        self,
        sandbox_id: str,
        changes: Mapping[str, Any],
        *,
        only_from: Iterable[str] | None = None,
    ) -> SandboxRecord | None:
        """Apply ``changes``; with ``only_from``, only if the current status is one
        of those (compare-and-set). Returns the new record, or None if nothing changed."""
        ...

    async def list_sandboxes(
        self,
        *,
        tenant: str | None,
        statuses: Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        template: str | None = None,
        disk_gb: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page: ...

    async def expired(self, now: datetime, statuses: Iterable[str]) -> list[SandboxRecord]: ...

    async def usage(self, tenant: str, statuses: Iterable[str]) -> TenantUsage: ...

    async def quota_and_usage(
        self, tenant: str, statuses: Iterable[str]
    ) -> tuple[QuotaRecord | None, TenantUsage]:
        """The tenant's quota override and ``usage`` in one round trip: every
        create reads both under its tenant's lock."""
        ...

    async def claim_sandbox(
        self,
        *,
        tenant: str,
        status: str,
        template: str,
        disk_gb: int,
        changes: Mapping[str, Any],
        charge: Callable[[QuotaRecord | None, TenantUsage], None],
        charge_statuses: Iterable[str],
    ) -> SandboxRecord | None:
        """Apply ``changes`` to the oldest sandbox of ``tenant`` in ``status`` with
        this template and disk size, if there is one (None if not), and in the same
        transaction call ``charge`` with the quota override and usage (sandboxes
        in ``charge_statuses``) of its new tenant, the claimed one left out. An
        exception from ``charge`` rolls the claim back and propagates. One round
        trip: a pooled create's claim and quota check."""
        ...

    async def set_last_activity(self, times: Mapping[str, datetime]) -> None:
        """``last_activity_at`` of many sandboxes in one transaction."""
        ...

    async def idle_candidates(self, statuses: Iterable[str]) -> list[SandboxRecord]:
        """Sandboxes in ``statuses`` that have an idle timeout."""
        ...

    # snapshots
    async def insert_snapshot(self, record: SnapshotRecord) -> None:
        """Raises Conflict when the tenant has a snapshot of that name."""
        ...

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...

    async def snapshot_by_name(self, tenant: str, name: str) -> SnapshotRecord | None: ...

    async def list_snapshots(
        self, tenant: str | None, sandbox_id: str | None = None
    ) -> list[SnapshotRecord]: ...

    async def delete_snapshot(self, snapshot_id: str) -> bool: ...

    # keys
    async def insert_key(self, record: ApiKeyRecord) -> None: ...

    async def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    async def list_keys(self, tenant: str | None) -> list[ApiKeyRecord]: ...

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKeyRecord | None: ...

    # quotas
    async def get_quota(self, tenant: str) -> QuotaRecord | None: ...

    async def set_quota(self, record: QuotaRecord) -> None: ...
