"""The SQL store: SQLAlchemy 2 (asyncio) over SQLite by default.

SQLite runs in WAL mode so readers never wait for the writer; the schema is
owned by alembic and migrated on ``open()``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sandbank.errors import BadRequest, Conflict
from sandbank.server.store.base import (
    ApiKeyRecord,
    Page,
    QuotaRecord,
    SandboxRecord,
    SnapshotRecord,
    TenantUsage,
)
from sandbank.server.store.claim import claim_oldest, quota_query, quota_row
from sandbank.server.store.claim import sandbox_of as _sandbox
from sandbank.server.store.tables import api_keys, quotas, sandboxes, snapshots

_MIGRATIONS = Path(__file__).with_name("migrations")
_KEY_FIELDS = [f.name for f in fields(ApiKeyRecord)]
_SNAPSHOT_FIELDS = [f.name for f in fields(SnapshotRecord)]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _migrate(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _key(row: Row[Any]) -> ApiKeyRecord:
    data = row._mapping
    return ApiKeyRecord(**{name: data[name] for name in _KEY_FIELDS})


def _snapshot(row: Row[Any]) -> SnapshotRecord:
    data = row._mapping
    return SnapshotRecord(**{name: data[name] for name in _SNAPSHOT_FIELDS})


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError(raw)
        return int(raw[1:])
    except ValueError as exc:
        raise BadRequest(f"cursor {cursor!r} is not one this server issued") from exc


class SqlStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine = create_async_engine(url)
        #: For SQLite files, a plain driver engine for the hot path that takes
        #: one transaction to a thread at once (see ``claim_sandbox``).
        self._direct: Engine | None = None
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
            if ":memory:" not in url and "+aiosqlite" in url:
                self._direct = create_engine(url.replace("+aiosqlite", "", 1))
                event.listen(self._direct, "connect", _sqlite_pragmas)

    async def open(self) -> None:
        if self.url.startswith("sqlite") and ":memory:" not in self.url:
            Path(self.url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        async with self._engine.begin() as conn:
            await conn.run_sync(_migrate)

    async def close(self) -> None:
        await self._engine.dispose()
        if self._direct is not None:
            self._direct.dispose()

    # -- sandboxes ---------------------------------------------------------------

    async def insert_sandbox(self, record: SandboxRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(sandboxes).values(**asdict(record)))

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(sandboxes).where(sandboxes.c.id == sandbox_id))
            ).first()
        return _sandbox(row) if row else None

    async def update_sandbox(
        self,
        sandbox_id: str,
        changes: Mapping[str, Any],
        *,
        only_from: Iterable[str] | None = None,
    ) -> SandboxRecord | None:
        stmt = update(sandboxes).where(sandboxes.c.id == sandbox_id).values(**changes)
        if only_from is not None:
            stmt = stmt.where(sandboxes.c.status.in_(list(only_from)))
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(sandboxes).where(sandboxes.c.id == sandbox_id))).one()
        return _sandbox(row)

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
    ) -> Page:
        stmt = select(sandboxes).order_by(sandboxes.c.seq).limit(limit + 1)
        if tenant is not None:
            stmt = stmt.where(sandboxes.c.tenant == tenant)
        if statuses is not None:
            stmt = stmt.where(sandboxes.c.status.in_(list(statuses)))
        if template is not None:
            stmt = stmt.where(sandboxes.c.template == template)
        if disk_gb is not None:
            stmt = stmt.where(sandboxes.c.disk_gb == disk_gb)
        for key, value in (metadata or {}).items():
            stmt = stmt.where(sandboxes.c.metadata[key].as_string() == value)
        if cursor:
            stmt = stmt.where(sandboxes.c.seq > _decode_cursor(cursor))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]._mapping["seq"]) if more and rows else None
        return Page(items=[_sandbox(r) for r in rows], next_cursor=next_cursor)

    async def expired(self, now: datetime, statuses: Iterable[str]) -> list[SandboxRecord]:
        stmt = select(sandboxes).where(
            sandboxes.c.expires_at.is_not(None),
            sandboxes.c.expires_at <= now,
            sandboxes.c.status.in_(list(statuses)),
        )
        async with self._engine.connect() as conn:
            return [_sandbox(r) for r in (await conn.execute(stmt)).all()]

    async def usage(self, tenant: str, statuses: Iterable[str]) -> TenantUsage:
        stmt = select(
            func.count(sandboxes.c.seq),
            func.coalesce(func.sum(sandboxes.c.vcpu), 0.0),
            func.coalesce(func.sum(sandboxes.c.memory_mb), 0),
        ).where(sandboxes.c.tenant == tenant, sandboxes.c.status.in_(list(statuses)))
        async with self._engine.connect() as conn:
            count, vcpu, memory = (await conn.execute(stmt)).one()
        return TenantUsage(sandboxes=int(count), vcpu=float(vcpu), memory_mb=int(memory))

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
        claim = functools.partial(
            claim_oldest, tenant, status, template, disk_gb, changes, charge, list(charge_statuses)
        )
        if self._direct is not None:
            # A pooled create waits for this. The asyncio driver hops to its
            # thread for every call (cursor, execute, fetch, commit); one hop
            # for the whole transaction takes a third of the time.
            direct = self._direct

            def in_thread() -> SandboxRecord | None:
                with direct.begin() as conn:
                    return claim(conn)

            return await asyncio.to_thread(in_thread)
        async with self._engine.begin() as conn:
            return await conn.run_sync(claim)

    async def quota_and_usage(
        self, tenant: str, statuses: Iterable[str]
    ) -> tuple[QuotaRecord | None, TenantUsage]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(*quota_query(tenant, statuses))).one()
        return quota_row(tenant, row)

    async def set_last_activity(self, times: Mapping[str, datetime]) -> None:
        if not times:
            return
        stmt = (
            update(sandboxes)
            .where(sandboxes.c.id == bindparam("sid"))
            .values(last_activity_at=bindparam("at"))
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [{"sid": k, "at": v} for k, v in times.items()])

    async def idle_candidates(self, statuses: Iterable[str]) -> list[SandboxRecord]:
        stmt = select(sandboxes).where(
            sandboxes.c.idle_timeout.is_not(None), sandboxes.c.status.in_(list(statuses))
        )
        async with self._engine.connect() as conn:
            return [_sandbox(r) for r in (await conn.execute(stmt)).all()]

    # -- snapshots ---------------------------------------------------------------

    async def insert_snapshot(self, record: SnapshotRecord) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(snapshots).values(**asdict(record)))
        except IntegrityError as exc:
            raise Conflict(
                f"a snapshot named {record.name!r} exists already; pick another name",
                name=record.name,
            ) from exc

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(snapshots).where(snapshots.c.id == snapshot_id))
            ).first()
        return _snapshot(row) if row else None

    async def snapshot_by_name(self, tenant: str, name: str) -> SnapshotRecord | None:
        stmt = select(snapshots).where(snapshots.c.tenant == tenant, snapshots.c.name == name)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _snapshot(row) if row else None

    async def list_snapshots(
        self, tenant: str | None, sandbox_id: str | None = None
    ) -> list[SnapshotRecord]:
        stmt = select(snapshots).order_by(snapshots.c.seq)
        if tenant is not None:
            stmt = stmt.where(snapshots.c.tenant == tenant)
        if sandbox_id is not None:
            stmt = stmt.where(snapshots.c.sandbox_id == sandbox_id)
        async with self._engine.connect() as conn:
            return [_snapshot(r) for r in (await conn.execute(stmt)).all()]

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(snapshots.delete().where(snapshots.c.id == snapshot_id))
        return bool(result.rowcount)

    # -- keys --------------------------------------------------------------------

    async def insert_key(self, record: ApiKeyRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(api_keys).values(**asdict(record)))

    async def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash))
            ).first()
        return _key(row) if row else None

    async def list_keys(self, tenant: str | None) -> list[ApiKeyRecord]:
        stmt = select(api_keys).order_by(api_keys.c.created_at)
        if tenant is not None:
            stmt = stmt.where(api_keys.c.tenant == tenant)
        async with self._engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(stmt)).all()]

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKeyRecord | None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    # -- quotas ------------------------------------------------------------------

    async def get_quota(self, tenant: str) -> QuotaRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(quotas).where(quotas.c.tenant == tenant))).first()
        return QuotaRecord(**row._mapping) if row else None

    async def set_quota(self, record: QuotaRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(quotas.delete().where(quotas.c.tenant == record.tenant))
            await conn.execute(insert(quotas).values(**asdict(record)))
