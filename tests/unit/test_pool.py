"""The warm pool over the fake runtime and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbank.errors import (
    InvalidState,
    QuotaExceeded,
    RuntimeFailure,
    SandboxNotFound,
    ValidationFailed,
)
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.service.lifecycle import TRANSITIONS, SandboxState
from sandbank.server.service.params import CreateParams, ExecParams
from sandbank.server.service.policy import Quota
from sandbank.server.service.pool import POOL_TENANT, PoolConfig
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import SandboxRecord
from sandbank.server.store.sql import SqlStore
from tests.unit.test_service import LIMITS, Clock

S = SandboxState


class FlakyRuntime(FakeRuntime):
    """The fake runtime, with a customize that can be made to fail."""

    def __init__(self, templates: tuple[str, ...] = ("base", "python")) -> None:
        super().__init__(templates)
        self.fail_customize: BaseException | None = None
        self.customized: list[str] = []

    async def customize(self, spec: SandboxSpec) -> None:
        if self.fail_customize is not None:
            exc, self.fail_customize = self.fail_customize, None
            raise exc
        await super().customize(spec)
        self.customized.append(spec.id)


@dataclass
class Pool:
    service: SandboxService
    runtime: FlakyRuntime
    clock: Clock
    store: SqlStore
    telemetry: Telemetry
    restart: Callable[..., SandboxService]

    async def members(self) -> list[SandboxRecord]:
        return await self.service.pool.members()

    async def ids(self) -> set[str]:
        return {m.id for m in await self.members()}

    def metric(self, name: str, **labels: str) -> float:
        return self.telemetry.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    runtime = FlakyRuntime()
    clock = Clock()
    telemetry = Telemetry()

    def make(
        size: int = 2, templates: tuple[str, ...] = ("base",), refill_delay: float = 0.0
    ) -> SandboxService:
        return SandboxService(
            store,
            runtime,
            LIMITS,
            Quota(3, 8, 4096),
            clock,
            telemetry,
            pool=PoolConfig(
                size=size, templates=templates, backoff_min=0.05, refill_delay=refill_delay
            ),
        )

    parts = Pool(make(), runtime, clock, store, telemetry, make)
    yield parts
    await parts.service.pool.stop()
    await store.close()


async def test_hand_out_uses_a_member_and_refill_replaces_it(pool: Pool) -> None:
    assert await pool.service.pool.refill() == 2
    members = await pool.ids()
    assert len(members) == 2 and members == set(pool.runtime.boxes)
    assert pool.metric("sandbank_pool_size", template="base") == 2
    record = await pool.service.create("t1", CreateParams())
    assert record.id in members
    assert (record.tenant, record.status) == ("t1", "running")
    assert pool.runtime.customized == [record.id]
    assert pool.metric("sandbank_pool_size", template="base") == 1
    assert pool.metric("sandbank_pool_hits_total", template="base") == 1
    assert pool.metric("sandbank_sandboxes_running") == 1
    result = await pool.service.exec("t1", record.id, ExecParams(command="echo hi"))
    assert result.stdout == b"hi\n"
    assert await pool.service.pool.refill() == 1
    assert len(await pool.ids()) == 2 and record.id not in await pool.ids()
    assert len(pool.runtime.boxes) == 3
    await pool.service.kill("t1", record.id)
    assert record.id not in pool.runtime.boxes
    assert len(pool.runtime.boxes) == 2


async def test_hand_out_applies_limits_hostname_env_and_metadata(pool: Pool) -> None:
    await pool.service.pool.refill()
    pool.clock.advance(30)
    record = await pool.service.create(
        "t1",
        CreateParams(
            name="my-box",
            vcpu=2,
            memory_mb=1024,
            region="us-east",
            env={"GREETING": "hello"},
            metadata={"owner": "me"},
            timeout=60,
        ),
    )
    spec = pool.runtime.boxes[record.id].spec
    assert (spec.vcpu, spec.memory_mb, spec.hostname, spec.pids_limit) == (2, 1024, "my-box", 1024)
    assert spec.env == {"GREETING": "hello"}
    assert (record.name, record.vcpu, record.memory_mb, record.region) == (
        "my-box",
        2,
        1024,
        "us-east",
    )
    assert (record.env, record.metadata) == ({"GREETING": "hello"}, {"owner": "me"})
    # Its life starts at the hand-out, not when the pool started it.
    assert record.created_at == pool.clock.now
    assert record.expires_at is not None
    assert (record.expires_at - pool.clock.now).total_seconds() == 60
    usage = await pool.service.usage("t1", record.id)
    assert usage.memory_limit_bytes == 1024 * 2**20
    # A name that is no hostname leaves the default one.
    other = await pool.service.create("t1", CreateParams(name="My Box!"))
    assert other.name == "My Box!"
    assert pool.runtime.boxes[other.id].spec.hostname == f"sandbox-{other.id[:6]}"


async def test_quota_counts_members_only_once_handed_out(pool: Pool) -> None:
    await pool.service.pool.refill()
    assert (await pool.store.usage(POOL_TENANT, [S.POOLED])).sandboxes == 2
    for tenant in ("t1", "t2"):
        assert (await pool.store.usage(tenant, ["creating", "running", "killing"])).sandboxes == 0
    await pool.service.create("t1", CreateParams())
    await pool.service.create("t1", CreateParams())
    await pool.service.create("t1", CreateParams())  # the third one cold
    with pytest.raises(QuotaExceeded) as info:
        await pool.service.create("t1", CreateParams())
    assert info.value.details["current"] == 3
    # A refused create takes nothing from the pool.
    await pool.service.pool.refill()
    with pytest.raises(QuotaExceeded):
        await pool.service.create("t1", CreateParams())
    assert len(await pool.ids()) == 2
    await pool.service.create("t2", CreateParams(memory_mb=4096))
    with pytest.raises(QuotaExceeded, match="memory"):
        await pool.service.create("t2", CreateParams())
    assert len(await pool.ids()) == 1


async def test_members_are_invisible_to_tenants(pool: Pool) -> None:
    await pool.service.pool.refill()
    member = next(iter(await pool.ids()))
    for tenant in ("t1", POOL_TENANT):
        assert (await pool.service.list_sandboxes(tenant)).items == []
        for call in (pool.service.get, pool.service.kill):
            with pytest.raises(SandboxNotFound) as info:
                await call(tenant, member)
            assert "killed" not in info.value.message
        with pytest.raises(SandboxNotFound):
            await pool.service.exec(tenant, member, ExecParams(command="true"))
        with pytest.raises(SandboxNotFound):
            await pool.service.set_timeout(tenant, member, 10)
    with pytest.raises(ValidationFailed, match="unknown status 'pooled'") as bad:
        await pool.service.list_sandboxes("t1", status="pooled")
    assert bad.value.status == 422 and "running" in bad.value.message
    assert member in pool.runtime.boxes


async def test_concurrent_creates_get_distinct_sandboxes(pool: Pool) -> None:
    service = pool.restart(size=3)
    await service.pool.refill()
    members = {m.id for m in await service.pool.members()}
    records = await asyncio.gather(*(service.create(f"t{i % 2}", CreateParams()) for i in range(6)))
    ids = [r.id for r in records]
    assert len(set(ids)) == 6
    assert set(ids) & members == members  # every member handed out once
    assert await service.pool.members() == []
    assert pool.metric("sandbank_pool_hits_total", template="base") == 3
    assert pool.metric("sandbank_pool_misses_total", template="base", reason="empty") == 3
    assert set(pool.runtime.boxes) == set(ids)


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeFailure("cgroup write failed"),
        InvalidState("uses more memory than that"),
        NotImplementedError("customize"),
    ],
)
async def test_customize_failure_falls_back_to_cold(pool: Pool, failure: Exception) -> None:
    await pool.service.pool.refill()
    first, second = [m.id for m in await pool.members()]
    pool.runtime.fail_customize = failure
    record = await pool.service.create("t1", CreateParams(vcpu=2))
    assert record.id not in (first, second) and record.status == "running"
    assert pool.runtime.boxes[record.id].spec.vcpu == 2
    # The failed member is gone, on the pool's books, and never the tenant's.
    assert first not in pool.runtime.boxes
    gone = await pool.store.get_sandbox(first)
    assert gone is not None
    assert (gone.tenant, gone.status, gone.kill_reason) == (POOL_TENANT, "killed", "pool")
    assert [r.id for r in (await pool.service.list_sandboxes("t1")).items] == [record.id]
    assert [r.id for r in (await pool.service.list_sandboxes("t1", status="killed")).items] == []
    assert (await pool.store.usage("t1", ["creating", "running", "killing"])).sandboxes == 1
    assert await pool.ids() == {second}
    assert pool.metric("sandbank_pool_misses_total", template="base", reason="failed") == 1


async def test_dead_member_falls_back_to_cold(pool: Pool) -> None:
    await pool.service.pool.refill()
    first = (await pool.members())[0].id
    pool.runtime.boxes[first].alive = False
    record = await pool.service.create("t1", CreateParams())
    assert record.id != first and record.status == "running"
    assert first not in pool.runtime.boxes


async def test_cancelled_hand_out_leaves_nothing_to_the_tenant(pool: Pool) -> None:
    await pool.service.pool.refill()
    first = (await pool.members())[0].id
    pool.runtime.fail_customize = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        await pool.service.create("t1", CreateParams())
    assert first not in pool.runtime.boxes
    assert (await pool.service.list_sandboxes("t1")).items == []


async def test_other_templates_and_disk_sizes_go_cold(pool: Pool) -> None:
    await pool.service.pool.refill()
    members = await pool.ids()
    big = await pool.service.create("t1", CreateParams(disk_gb=2))
    py = await pool.service.create("t1", CreateParams(template="python"))
    assert big.id not in members and py.id not in members
    assert await pool.ids() == members
    assert pool.runtime.customized == []
    assert pool.metric("sandbank_pool_misses_total", template="base", reason="not_pooled") == 1
    assert pool.metric("sandbank_pool_misses_total", template="python", reason="not_pooled") == 1


async def test_pool_size_zero_is_off(pool: Pool) -> None:
    service = pool.restart(size=0)
    assert await service.pool.refill() == 0
    record = await service.create("t1", CreateParams())
    assert set(pool.runtime.boxes) == {record.id}


async def test_refill_replaces_dead_and_retires_surplus_members(pool: Pool) -> None:
    await pool.service.pool.refill()
    first, second = [m.id for m in await pool.members()]
    pool.runtime.boxes[first].alive = False
    assert await pool.service.pool.refill() == 1
    assert first not in pool.runtime.boxes and second in await pool.ids()
    assert (await pool.store.get_sandbox(first)) is not None
    smaller = pool.restart(size=1)
    assert await smaller.pool.refill() == 0
    assert await pool.ids() == {second}
    assert pool.metric("sandbank_pool_size", template="base") == 1
    # A template no longer pooled loses its members.
    other = pool.restart(size=1, templates=("python",))
    await other.pool.refill()
    assert [m.template for m in await other.pool.members()] == ["python"]
    assert second not in pool.runtime.boxes


async def test_failed_refill_leaves_no_record_behind(pool: Pool) -> None:
    pool.runtime.fail_next_create = "runc exploded"
    with pytest.raises(RuntimeFailure, match="runc exploded"):
        await pool.service.pool.refill()
    page = await pool.store.list_sandboxes(tenant=POOL_TENANT)
    assert [(r.status, r.kill_reason) for r in page.items] == [("killed", "pool")]
    assert pool.runtime.boxes == {}
    assert await pool.service.pool.refill() == 2
    assert len(await pool.ids()) == 2


async def test_background_refill_after_claims(pool: Pool) -> None:
    async def settled(count: int) -> None:
        for _ in range(200):
            if len(await pool.ids()) == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"pool never reached {count}")

    pool.service.pool.start()
    await settled(2)
    record = await pool.service.create("t1", CreateParams())
    await settled(2)
    assert record.id not in await pool.ids() and len(pool.runtime.boxes) == 3
    # A failed refill is retried after the backoff.
    pool.runtime.fail_next_create = "transient"
    await pool.service.create("t2", CreateParams())
    await settled(2)
    assert pool.metric("sandbank_pool_refill_failures_total") == 1
    await pool.service.pool.stop()
    # Stopping leaves the ready members running.
    assert len(await pool.ids()) in (1, 2) and all(
        m in pool.runtime.boxes for m in await pool.ids()
    )


async def test_refill_holds_back_right_after_a_hand_out(pool: Pool) -> None:
    service = pool.restart(size=2, refill_delay=0.3)
    await service.pool.refill()
    service.pool.start()

    async def refilled_after(count: int) -> float:
        started = time.monotonic()
        while len(await service.pool.members()) < count:
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    await service.create("t1", CreateParams())
    assert 0.3 <= await refilled_after(2) < 1.0
    # With fewer than half the members left, refilling comes first.
    await service.create("t1", CreateParams())
    await service.create("t1", CreateParams())
    assert await refilled_after(1) < 0.2
    await service.pool.stop()


async def test_reconcile_adopts_live_members_and_cleans_dead_ones(pool: Pool) -> None:
    await pool.service.pool.refill()
    alive, dead = [m.id for m in await pool.members()]
    pool.runtime.boxes[dead].alive = False
    await pool.runtime.create(
        SandboxSpec(
            id="orphan0000000000", template="base", vcpu=1, memory_mb=512, disk_gb=1, hostname="x"
        )
    )
    restarted = pool.restart()
    report = await restarted.reconcile()
    assert report["pooled"] == [alive]
    assert report["killed"] == [dead]
    assert report["orphans"] == ["orphan0000000000"]
    assert set(pool.runtime.boxes) == {alive}
    record = await pool.store.get_sandbox(dead)
    assert record is not None and (record.status, record.kill_reason) == ("killed", "pool")
    assert await restarted.pool.refill() == 1
    handed = await restarted.create("t1", CreateParams())
    assert handed.id == alive


async def test_reconcile_finishes_an_interrupted_member_start(pool: Pool) -> None:
    await pool.service.pool.refill()
    member = (await pool.members())[0]
    # As if the server died between recording a member and its start.
    await pool.store.update_sandbox(member.id, {"status": S.CREATING})
    report = await pool.restart().reconcile()
    assert report["killed"] == [member.id]
    record = await pool.store.get_sandbox(member.id)
    assert record is not None and record.kill_reason == "interrupted"
    assert member.id not in pool.runtime.boxes


def test_transitions_of_pooled() -> None:
    assert TRANSITIONS[S.POOLED] == frozenset({S.RUNNING, S.KILLING})
    assert S.POOLED in TRANSITIONS[S.CREATING]
