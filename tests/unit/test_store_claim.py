"""``Store.claim_sandbox``: the pooled create's claim and quota check in one
transaction, on a SQLite file (its own thread) and in memory (the asyncio engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbank.errors import QuotaExceeded
from sandbank.server.store.base import QuotaRecord, SandboxRecord, TenantUsage
from sandbank.server.store.sql import SqlStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(sandbox_id: str, tenant: str = "(pool)", status: str = "pooled") -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, tenant=tenant, name=f"sandbox-{sandbox_id[:6]}", status=status,
        template="base", vcpu=1.0, memory_mb=512, disk_gb=1, region="local",
        created_at=NOW, updated_at=NOW, expires_at=None,
    )  # fmt: skip


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    where = f"/{tmp_path / 'db.sqlite'}" if request.param == "file" else "/:memory:"
    store = SqlStore(f"sqlite+aiosqlite://{where}")
    await store.open()
    assert (store._direct is not None) == (request.param == "file")
    yield store
    await store.close()


async def claim(
    store: SqlStore, tenant: str = "t1", seen: list[TenantUsage] | None = None, limit: int = 9
) -> SandboxRecord | None:
    def charge(override: QuotaRecord | None, usage: TenantUsage) -> None:
        assert override is None
        if seen is not None:
            seen.append(usage)
        if usage.sandboxes >= limit:
            raise QuotaExceeded(f"{tenant} has {usage.sandboxes} sandboxes")

    return await store.claim_sandbox(
        tenant="(pool)", status="pooled", template="base", disk_gb=1,
        changes={"tenant": tenant, "status": "running", "memory_mb": 1024},
        charge=charge, charge_statuses=["running"],
    )  # fmt: skip


async def test_claims_the_oldest_and_charges_the_usage_before_it(store: SqlStore) -> None:
    for sandbox_id in ("m2", "m1", "m3"):
        await store.insert_sandbox(record(sandbox_id))
    await store.insert_sandbox(record("o1", tenant="t1", status="running"))
    seen: list[TenantUsage] = []
    first = await claim(store, seen=seen)
    assert first is not None and first.id == "m2"  # inserted first
    assert (first.tenant, first.status, first.memory_mb, first.name) == (
        "t1", "running", 1024, "sandbox-m2",
    )  # fmt: skip
    assert seen == [TenantUsage(sandboxes=1, vcpu=1.0, memory_mb=512)]
    second = await claim(store, seen=seen)
    assert second is not None and second.id == "m1"
    assert seen[-1] == TenantUsage(sandboxes=2, vcpu=2.0, memory_mb=1536)


async def test_a_refused_charge_leaves_the_member_pooled(store: SqlStore) -> None:
    await store.insert_sandbox(record("m1"))
    with pytest.raises(QuotaExceeded):
        await claim(store, limit=0)
    kept = await store.get_sandbox("m1")
    assert kept is not None and (kept.tenant, kept.status, kept.memory_mb) == (
        "(pool)",
        "pooled",
        512,
    )


async def test_only_pooled_members_of_the_template_and_disk(store: SqlStore) -> None:
    await store.insert_sandbox(record("r1", status="running"))
    other = record("p1")
    await store.insert_sandbox(SandboxRecord(**{**other.__dict__, "template": "python"}))
    await store.insert_sandbox(SandboxRecord(**{**record("d1").__dict__, "disk_gb": 2}))
    assert await claim(store) is None
    assert (await store.get_sandbox("r1")).tenant == "(pool)"  # type: ignore[union-attr]


async def test_concurrent_claims_get_distinct_members(store: SqlStore) -> None:
    for i in range(4):
        await store.insert_sandbox(record(f"m{i}"))
    got = await asyncio.gather(*(claim(store, tenant=f"t{i}") for i in range(6)))
    ids = [r.id for r in got if r is not None]
    assert sorted(ids) == ["m0", "m1", "m2", "m3"] and got.count(None) == 2
