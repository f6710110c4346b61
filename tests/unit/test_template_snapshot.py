"""Templates from snapshots over the fake runtime: tenants, the cache, clashes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbank.errors import Conflict, SnapshotNotFound, ValidationFailed
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.service.templates import TemplateService
from sandbank.server.store.base import SnapshotRecord
from sandbank.server.store.sql import SqlStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    db = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await db.open()
    yield db
    await db.close()


async def _snapshot(store: SqlStore, runtime: FakeRuntime, sid: str, tenant: str) -> None:
    runtime.snapshots[sid] = ({"/home/user/f": b"x"}, {"/", "/home", "/home/user"})
    await store.insert_snapshot(SnapshotRecord(
        id=sid, tenant=tenant, name=f"n-{sid}", sandbox_id="sbx", template="base",
        disk_gb=1, size_bytes=1, created_at=datetime.now(UTC),
    ))  # fmt: skip


async def test_from_snapshot_cache_clash_and_tenants(store: SqlStore) -> None:
    runtime = FakeRuntime()
    templates = TemplateService(runtime, store)
    await _snapshot(store, runtime, "snapa", "t1")
    await _snapshot(store, runtime, "snapb", "t1")
    await _snapshot(store, runtime, "snapc", "t2")

    info, cached = await templates.from_snapshot("t1", "app", "n-snapa", ("app:1",))
    assert not cached and info.kind == "snapshot" and info.base == "base"
    assert info.aliases == ("app:1",) and info.recipe_hash
    again, cached = await templates.from_snapshot("t1", "app", "snapa")
    assert cached and again.recipe_hash == info.recipe_hash

    for taken in ("app", "base"):
        with pytest.raises(Conflict):
            await templates.from_snapshot("t1", taken, "snapb")
    assert (await templates.get("app")).recipe_hash == info.recipe_hash
    # Another tenant's snapshot is not found, by id or by name.
    for ref in ("snapc", "n-snapc", "nothing"):
        with pytest.raises(SnapshotNotFound):
            await templates.from_snapshot("t1", "other", ref)
    with pytest.raises(ValidationFailed):
        await templates.from_snapshot("t1", "Bad Name", "snapb")
    # A snapshot whose files went (deleted meanwhile) is not found either.
    await runtime.delete_snapshot("snapb")
    with pytest.raises(SnapshotNotFound):
        await templates.from_snapshot("t1", "other", "snapb")
    assert [t.name for t in await templates.list()] == ["app", "base"]
