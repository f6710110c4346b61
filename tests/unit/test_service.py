"""Service logic over the fake runtime and a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandbank.errors import (
    InvalidState,
    QuotaExceeded,
    RuntimeFailure,
    SandboxNotFound,
    TemplateNotFound,
    Unauthorized,
    ValidationFailed,
)
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.service.keys import KEY_CACHE_TTL, KeyService
from sandbank.server.service.lifecycle import TRANSITIONS, SandboxState, require
from sandbank.server.service.params import CreateParams, ExecParams
from sandbank.server.service.policy import Limits, Quota
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import QuotaRecord
from sandbank.server.store.sql import SqlStore

LIMITS = Limits(
    vcpu_min=1,
    vcpu_max=4,
    vcpu_default=1,
    memory_mb_min=512,
    memory_mb_max=8192,
    memory_mb_default=512,
    disk_gb_min=1,
    disk_gb_max=50,
    disk_gb_default=1,
    regions=("eu-north", "us-east"),
    default_region="eu-north",
    default_timeout=300,
    max_timeout=86400,
    exec_timeout_max=3600,
    pids_limit=1024,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


Parts = tuple[SandboxService, FakeRuntime, Clock, SqlStore]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    runtime = FakeRuntime()
    clock = Clock()
    service = SandboxService(store, runtime, LIMITS, Quota(3, 8, 4096), clock, Telemetry())
    yield service, runtime, clock, store
    await store.close()


async def test_create_exec_kill(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams(metadata={"a": "b"}))
    assert record.status == "running" and record.id in runtime.boxes
    result = await service.exec("t1", record.id, ExecParams(command="echo hi"))
    assert result.stdout == b"hi\n"
    await service.kill("t1", record.id)
    await service.kill("t1", record.id)  # idempotent
    assert runtime.destroyed == [record.id]
    with pytest.raises(SandboxNotFound, match="killed"):
        await service.get("t1", record.id)


async def test_other_tenant_sees_not_found(parts: Parts) -> None:
    service, _, _, _ = parts
    record = await service.create("t1", CreateParams())
    for call in (service.get, service.kill):
        with pytest.raises(SandboxNotFound) as info:
            await call("t2", record.id)
        assert "killed" not in info.value.message
    assert (await service.list_sandboxes("t2")).items == []


async def test_limits_and_quota(parts: Parts) -> None:
    service, runtime, _, _ = parts
    with pytest.raises(ValidationFailed, match="vcpu"):
        await service.create("t1", CreateParams(vcpu=5))
    with pytest.raises(TemplateNotFound, match="base"):
        await service.create("t1", CreateParams(template="nope"))
    for _ in range(3):
        await service.create("t1", CreateParams())
    with pytest.raises(QuotaExceeded) as info:
        await service.create("t1", CreateParams())
    assert info.value.details["limit"] == "max_sandboxes"
    assert info.value.details["current"] == 3
    assert len(runtime.boxes) == 3
    await service.create("t2", CreateParams(vcpu=4, memory_mb=2048))
    with pytest.raises(QuotaExceeded) as info:
        await service.create("t2", CreateParams(vcpu=4, memory_mb=4096))
    assert info.value.details["limit"] in ("max_vcpu", "max_memory_mb")


async def test_quota_override_of_one_tenant(parts: Parts) -> None:
    service, _, _, store = parts
    await store.set_quota(QuotaRecord(tenant="t1", max_sandboxes=1))
    await service.create("t1", CreateParams())
    with pytest.raises(QuotaExceeded) as info:
        await service.create("t1", CreateParams())
    assert (info.value.details["limit"], info.value.details["maximum"]) == ("max_sandboxes", 1)
    await store.set_quota(QuotaRecord(tenant="t2", max_memory_mb=1024))
    await service.create("t2", CreateParams(vcpu=2, memory_mb=1024))
    with pytest.raises(QuotaExceeded, match="memory"):
        await service.create("t2", CreateParams())


async def test_failed_create_leaves_an_error_record_and_nothing_running(
    parts: Parts,
) -> None:
    service, runtime, _, store = parts
    runtime.fail_next_create = "runc exploded"
    with pytest.raises(RuntimeFailure):
        await service.create("t1", CreateParams())
    page = await store.list_sandboxes(tenant="t1")
    assert [r.status for r in page.items] == ["error"]
    assert "runc exploded" in (page.items[0].error or "")
    assert runtime.boxes == {}
    with pytest.raises(InvalidState):
        await service.exec("t1", page.items[0].id, ExecParams(command="true"))


async def test_sweep_kills_expired_with_reason(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    short = await service.create("t1", CreateParams(timeout=10))
    long = await service.create("t1", CreateParams(timeout=100))
    clock.advance(11)
    assert await service.sweep() == [short.id]
    with pytest.raises(SandboxNotFound, match="timeout"):
        await service.get("t1", short.id)
    await service.set_timeout("t1", long.id, 5)
    clock.advance(4)
    assert await service.sweep() == []
    clock.advance(2)
    assert await service.sweep() == [long.id]
    assert runtime.boxes == {}


async def test_reconcile_adopts_kills_and_cleans(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    alive = await service.create("t1", CreateParams(timeout=100))
    expired = await service.create("t1", CreateParams(timeout=5))
    lost = await service.create("t1", CreateParams(timeout=100))
    runtime.boxes[lost.id].alive = False
    await runtime.create(
        SandboxSpec(
            id="orphan0000000000", template="base", vcpu=1, memory_mb=512, disk_gb=1, hostname="x"
        )
    )
    clock.advance(10)
    report = await service.reconcile()
    assert report["adopted"] == [alive.id]
    assert report["killed"] == [expired.id]
    assert report["lost"] == [lost.id]
    assert report["orphans"] == ["orphan0000000000"]
    assert set(runtime.boxes) == {alive.id}
    assert (await service.get("t1", lost.id)).status == "error"


async def test_list_validation(parts: Parts) -> None:
    service, _, _, _ = parts
    with pytest.raises(ValidationFailed):
        await service.list_sandboxes("t1", status="sleeping")
    with pytest.raises(ValidationFailed):
        await service.list_sandboxes("t1", limit=0)


def test_transition_table_is_closed() -> None:
    assert set(TRANSITIONS) == set(SandboxState)
    assert TRANSITIONS[SandboxState.KILLED] == frozenset()
    with pytest.raises(InvalidState, match="it is creating; wait"):
        require("creating", frozenset({SandboxState.RUNNING}), "exec in", "abc")


async def test_keys(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'k.sqlite'}")
    await store.open()
    keys = KeyService(store, lambda: datetime.now(UTC), "static-admin")
    assert (await keys.authenticate("static-admin")).admin
    record, key = await keys.create("acme", "ci")
    who = await keys.authenticate(key)
    assert (who.tenant, who.admin) == ("acme", False)
    assert record.key_hash != key and key not in repr(record.key_hash)
    await keys.revoke(who, record.id)
    with pytest.raises(Unauthorized):
        await keys.authenticate(key)
    with pytest.raises(Unauthorized):
        await keys.authenticate(None)
    await store.close()


async def test_key_lookups_are_kept_briefly_and_revocation_is_immediate(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'k.sqlite'}")
    await store.open()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    keys = KeyService(store, lambda: now[0], None)
    record, key = await keys.create("acme")
    reads: list[str] = []
    real_lookup = store.key_by_hash

    async def counted(key_hash: str) -> Any:
        reads.append(key_hash)
        return await real_lookup(key_hash)

    store.key_by_hash = counted  # type: ignore[method-assign]
    first = await keys.authenticate(key)
    assert await keys.authenticate(key) == first and len(reads) == 1
    now[0] += KEY_CACHE_TTL
    assert await keys.authenticate(key) == first and len(reads) == 2  # read again
    for _ in range(2):  # an unknown key is looked up every time
        with pytest.raises(Unauthorized):
            await keys.authenticate("sbk_unknown")
    assert len(reads) == 4

    # A lookup that read the store before a revoke finished is not kept.
    other, other_key = await keys.create("acme")

    async def overtaken(key_hash: str) -> Any:
        found = await real_lookup(key_hash)
        await keys.revoke(first, record.id)
        return found

    store.key_by_hash = overtaken  # type: ignore[method-assign]
    await keys.authenticate(other_key)
    store.key_by_hash = counted  # type: ignore[method-assign]
    await keys.authenticate(other_key)
    assert reads[-1] == other.key_hash
    with pytest.raises(Unauthorized):  # revoked: refused at once, though it was kept
        await keys.authenticate(key)
    await store.close()
