"""Table definitions; the schema itself is created by the alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

sandboxes = Table(
    "sandboxes",
    metadata,
    # seq orders the list and backs its opaque cursor.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("template", String(128), nullable=False),
    Column("vcpu", Float, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("disk_gb", Integer, nullable=False),
    Column("region", String(64), nullable=False),
    Column("env", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True, index=True),
    Column("killed_at", UTCDateTime(), nullable=True),
    Column("kill_reason", String(64), nullable=True),
    Column("error", Text, nullable=True),
    Column("network", JSON, nullable=False, server_default="{}"),
    Column("idle_timeout", Integer, nullable=True),
    Column("on_timeout", String(16), nullable=False, server_default="kill"),
    Column("auto_resume", Boolean, nullable=False, server_default="0"),
    Column("last_activity_at", UTCDateTime(), nullable=True),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("sandbox_id", String(64), nullable=False, index=True),
    Column("template", String(128), nullable=False),
    Column("disk_gb", Integer, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("memory", Boolean, nullable=False, server_default="0"),
    UniqueConstraint("tenant", "name", name="uq_snapshots_tenant_name"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("name", String(128), nullable=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

quotas = Table(
    "quotas",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("max_sandboxes", Integer, nullable=True),
    Column("max_vcpu", Float, nullable=True),
    Column("max_memory_mb", Integer, nullable=True),
)
