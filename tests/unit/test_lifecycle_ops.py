"""Stop/start/restart, resize, idle timeouts and snapshots over the fake runtime
and a real SQLite store; and the transition table against its documented copy."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from sandbank.errors import (
    Conflict,
    DiskFull,
    InvalidState,
    QuotaExceeded,
    SandboxNotFound,
    SandboxPaused,
    SnapshotNotFound,
    ValidationFailed,
)
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import JobSpec
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.service.lifecycle import ACTIVE, TRANSITIONS, SandboxState, require
from sandbank.server.service.lifecycle_ops import UpdateParams
from sandbank.server.service.params import CreateParams, ExecParams
from sandbank.server.service.policy import Quota
from sandbank.server.service.preview import PreviewGate
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.sql import SqlStore
from tests.unit.test_service import LIMITS, Clock

S = SandboxState
Parts = tuple[SandboxService, FakeRuntime, Clock, SqlStore]
DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"


def make_service(store: SqlStore, runtime: FakeRuntime, clock: Clock) -> SandboxService:
    return SandboxService(store, runtime, LIMITS, Quota(2, 8, 4096), clock, Telemetry())


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    runtime, clock = FakeRuntime(), Clock()
    yield make_service(store, runtime, clock), runtime, clock, store
    await store.close()


# -- the table ----------------------------------------------------------------------


def test_table_matches_docs() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Sandbox states") :]
    documented: dict[str, set[str]] = {}
    for src, dsts in re.findall(r"^\| (\w+) \| ([^|]+) \|$", section, re.M):
        if src == "from":
            continue
        documented[src] = {d.strip() for d in dsts.split(",") if d.strip() not in ("—", "")}
    assert documented == {k.value: {v.value for v in vs} for k, vs in TRANSITIONS.items()}


def test_table_shape() -> None:
    assert set(TRANSITIONS) == set(SandboxState)
    assert {s for s, dsts in TRANSITIONS.items() if S.STOPPED in dsts} == {S.STOPPING, S.STARTING}
    assert S.STOPPED not in ACTIVE and S.STOPPING in ACTIVE and S.STARTING in ACTIVE
    # Everything but killed can still be deleted.
    assert all(S.KILLING in d or s in (S.KILLING, S.KILLED) for s, d in TRANSITIONS.items())


def test_require_names_state_and_way_out() -> None:
    with pytest.raises(InvalidState) as err:
        require("stopped", frozenset({S.RUNNING}), "pause", "abc")
    assert err.value.details["state"] == "stopped"
    assert err.value.details["allowed_states"] == ["running"]
    assert "POST /v1/sandboxes/abc/start" in err.value.message
    with pytest.raises(SandboxPaused):
        require("paused", frozenset({S.RUNNING}), "exec in", "abc")


# -- stop / start --------------------------------------------------------------------


async def test_stop_start_keeps_disk_drops_processes(parts: Parts) -> None:
    service, runtime, _, store = parts
    record = await service.create("t1", CreateParams())
    channel = runtime.channel(record.id)
    await channel.write_file("kept.txt", _chunks(b"kept"))
    await channel.start(JobSpec(cmd=["sleep", "100"]))
    stopped = await service.lifecycle.stop("t1", record.id)
    assert stopped.status == "stopped" and not runtime.boxes[record.id].alive
    assert (await service.lifecycle.stop("t1", record.id)).status == "stopped"
    assert (await store.usage("t1", ACTIVE)).sandboxes == 0
    with pytest.raises(InvalidState, match="start it first"):
        await service.exec("t1", record.id, ExecParams(cmd=["true"]))
    with pytest.raises(InvalidState):
        await service.pause("t1", record.id)
    started = await service.lifecycle.start("t1", record.id)
    assert started.status == "running"
    assert runtime.boxes[record.id].files["/home/user/kept.txt"] == b"kept"
    assert await runtime.channel(record.id).jobs() == []
    assert (await service.lifecycle.start("t1", record.id)).status == "running"
    assert (await service.resume("t1", record.id)).status == "running"


async def test_stop_paused_and_restart(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.pause("t1", record.id)
    assert (await service.lifecycle.stop("t1", record.id)).status == "stopped"
    assert not runtime.boxes[record.id].paused
    assert (await service.lifecycle.restart("t1", record.id)).status == "running"
    assert (await service.lifecycle.restart("t1", record.id)).status == "running"


async def test_start_checks_quota_and_failure_stays_stopped(parts: Parts) -> None:
    service, runtime, _, _ = parts
    first = await service.create("t1", CreateParams())
    await service.lifecycle.stop("t1", first.id)
    # A stopped sandbox does not count: two more fit in a quota of two.
    others = [await service.create("t1", CreateParams()) for _ in range(2)]
    with pytest.raises(QuotaExceeded):
        await service.lifecycle.start("t1", first.id)
    await service.kill("t1", others[0].id)
    runtime.fail_next_create = "no luck"
    with pytest.raises(Exception, match="no luck"):
        await service.lifecycle.start("t1", first.id)
    again = await service.get("t1", first.id)
    assert again.status == "stopped" and "no luck" in (again.error or "")
    assert (await service.lifecycle.start("t1", first.id)).status == "running"


async def test_other_tenant_cannot_stop(parts: Parts) -> None:
    service, _, _, _ = parts
    record = await service.create("t1", CreateParams())
    with pytest.raises(SandboxNotFound):
        await service.lifecycle.stop("t2", record.id)


async def test_recovery_finishes_interrupted_stop_and_start(parts: Parts) -> None:
    service, runtime, clock, store = parts
    a = await service.create("t1", CreateParams())
    b = await service.create("t1", CreateParams())
    await store.update_sandbox(a.id, {"status": "stopping"})
    await store.update_sandbox(b.id, {"status": "starting"})
    fresh = make_service(store, runtime, clock)
    report = await fresh.reconcile()
    assert sorted(report["stopped"]) == sorted([a.id, b.id])
    for sid in (a.id, b.id):
        assert (await fresh.get("t1", sid)).status == "stopped"
        assert not runtime.boxes[sid].alive


# -- resize and policy ------------------------------------------------------------------


async def test_resize_live_and_bad_input(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams(memory_mb=1024))
    grown = await service.lifecycle.update("t1", record.id, UpdateParams(vcpu=2, memory_mb=2048))
    assert (grown.vcpu, grown.memory_mb) == (2, 2048)
    assert runtime.boxes[record.id].spec.memory_mb == 2048
    with pytest.raises(ValidationFailed):
        await service.lifecycle.update("t1", record.id, UpdateParams(memory_mb=10**6))
    with pytest.raises(QuotaExceeded):
        await service.lifecycle.update("t1", record.id, UpdateParams(memory_mb=8192))
    runtime.boxes[record.id].files["/big"] = b"x" * (600 * 2**20)
    with pytest.raises(InvalidState):
        await service.lifecycle.update("t1", record.id, UpdateParams(memory_mb=512))
    assert (await service.get("t1", record.id)).memory_mb == 2048
    await service.pause("t1", record.id)
    with pytest.raises(SandboxPaused):
        await service.lifecycle.update("t1", record.id, UpdateParams(vcpu=1))


async def test_idle_kill_resets_on_activity(parts: Parts) -> None:
    service, _, clock, _ = parts
    record = await service.create("t1", CreateParams(idle_timeout=10))
    assert record.idle_timeout == 10 and record.on_timeout == "kill"
    clock.advance(8)
    await service.exec("t1", record.id, ExecParams(cmd=["true"]))
    clock.advance(8)
    assert await service.sweep() == []
    clock.advance(3)
    assert await service.sweep() == [record.id]
    with pytest.raises(SandboxNotFound, match="idle"):
        await service.get("t1", record.id)


async def test_idle_pause_then_auto_resume(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create(
        "t1", CreateParams(idle_timeout=5, on_timeout="pause", auto_resume=True)
    )
    clock.advance(6)
    assert await service.sweep() == [record.id]
    assert (await service.get("t1", record.id)).status == "paused"
    clock.advance(60)
    assert await service.sweep() == []  # paused: the pause action does not apply again
    result = await service.exec("t1", record.id, ExecParams(cmd=["echo", "hi"]))
    assert result.stdout == b"hi\n" and not runtime.boxes[record.id].paused


async def test_idle_hibernate_then_auto_wake(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create(
        "t1", CreateParams(idle_timeout=5, on_timeout="hibernate", auto_resume=True)
    )
    clock.advance(6)
    assert await service.sweep() == [record.id]
    assert (await service.get("t1", record.id)).status == "hibernated"
    assert runtime.hibernated_image(record.id) is not None
    clock.advance(60)
    assert await service.sweep() == []  # hibernated: the action does not apply again
    result = await service.exec("t1", record.id, ExecParams(cmd=["echo", "hi"]))
    assert result.stdout == b"hi\n"
    assert (await service.get("t1", record.id)).status == "running"


async def test_hibernated_without_auto_resume_says_how_to_wake(parts: Parts) -> None:
    service, _, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.checkpoints.hibernate("t1", record.id)
    with pytest.raises(InvalidState, match="wake it first"):
        await service.exec("t1", record.id, ExecParams(cmd=["true"]))


async def test_idle_survives_restart(parts: Parts) -> None:
    service, runtime, clock, store = parts
    record = await service.create("t1", CreateParams())
    await service.lifecycle.update("t1", record.id, UpdateParams(idle_timeout=100))
    clock.advance(90)
    await service.get("t1", record.id)
    await service.sweep()  # flushes the activity
    assert (await store.get_sandbox(record.id)).last_activity_at == clock.now  # type: ignore[union-attr]
    fresh = make_service(store, runtime, clock)
    clock.advance(60)
    assert await fresh.sweep() == []
    clock.advance(41)
    assert await fresh.sweep() == [record.id]


async def test_policy_validation(parts: Parts) -> None:
    service, _, _, _ = parts
    with pytest.raises(ValidationFailed, match="on_timeout"):
        await service.create("t1", CreateParams(idle_timeout=5, on_timeout="sleep"))
    record = await service.create("t1", CreateParams())
    with pytest.raises(ValidationFailed, match="idle_timeout"):
        await service.lifecycle.update("t1", record.id, UpdateParams(idle_timeout=-1))
    cleared = await service.lifecycle.update("t1", record.id, UpdateParams(idle_timeout=0))
    assert cleared.idle_timeout is None


# -- snapshots -------------------------------------------------------------------------


async def test_snapshot_restore_and_create_from(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    runtime.boxes[record.id].files["/f"] = b"one"
    snap = await service.snapshots.take("t1", record.id, "first")
    assert (snap.name, snap.sandbox_id, snap.size_bytes) == ("first", record.id, 3)
    with pytest.raises(Conflict):
        await service.snapshots.take("t1", record.id, "first")
    runtime.boxes[record.id].files["/f"] = b"two"
    restored = await service.snapshots.restore("t1", record.id, "first")
    assert restored.status == "running" and runtime.boxes[record.id].files["/f"] == b"one"
    clone = await service.create("t1", CreateParams(snapshot=snap.id))
    assert clone.status == "running" and runtime.boxes[clone.id].files["/f"] == b"one"
    assert [s.id for s in await service.snapshots.list_all("t1")] == [snap.id]
    # Another tenant sees none of it.
    assert await service.snapshots.list_all("t2") == []
    other = await service.create("t2", CreateParams())
    for call in (
        service.snapshots.get("t2", snap.id),
        service.snapshots.restore("t2", other.id, snap.id),
        service.create("t2", CreateParams(snapshot="first")),
        service.snapshots.delete("t2", snap.id),
    ):
        with pytest.raises(SnapshotNotFound):
            await call
    await service.snapshots.delete("t1", "first")
    assert snap.id not in runtime.snapshots
    with pytest.raises(SnapshotNotFound):
        await service.snapshots.get("t1", snap.id)


async def test_snapshot_disk_full_leaves_nothing(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    runtime.boxes[record.id].files["/f"] = b"x" * 100
    runtime.snapshot_room = 10
    with pytest.raises(DiskFull):
        await service.snapshots.take("t1", record.id, None)
    assert await service.snapshots.list_all("t1") == [] and runtime.snapshots == {}
    assert (await service.get("t1", record.id)).status == "running"


async def test_snapshot_orphans_removed_at_start(parts: Parts) -> None:
    _, runtime, clock, store = parts
    runtime.snapshots["snaplost"] = ({}, set())
    report = await make_service(store, runtime, clock).reconcile()
    assert report["snapshot_orphans"] == ["snaplost"] and runtime.snapshots == {}


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_deadline_kills_stopped_and_timeout_extends_it(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create("t1", CreateParams(timeout=60))
    await service.lifecycle.stop("t1", record.id)
    clock.advance(50)
    assert (await service.set_timeout("t1", record.id, 60)).status == "stopped"
    clock.advance(50)
    assert await service.sweep() == []
    clock.advance(11)
    assert await service.sweep() == [record.id]
    assert record.id not in runtime.boxes


async def test_auto_resume_under_the_lock_does_not_deadlock(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams(auto_resume=True))
    await service.pause("t1", record.id)
    policy = NetworkPolicy(allow_internet_access=False)
    updated = await asyncio.wait_for(service.set_network("t1", record.id, policy), 5)
    assert updated.status == "running" and runtime.boxes[record.id].spec.network == policy


async def test_preview_requests_count_as_activity(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    runtime, clock = FakeRuntime(), Clock()
    service = make_service(store, runtime, clock)
    gate = PreviewGate(store, runtime, tmp_path / "preview.key", touch=service.idle.touch)
    try:
        record = await service.create("t1", CreateParams(idle_timeout=10))
        clock.advance(8)
        await gate.open(record.id, 8080, token=None, tenant="t1")
        clock.advance(8)
        assert await service.sweep() == []
        clock.advance(3)
        assert await service.sweep() == [record.id]
    finally:
        await store.close()


async def test_a_followed_stream_keeps_the_sandbox_busy(parts: Parts) -> None:
    service, _, clock, _ = parts
    record = await service.create("t1", CreateParams(idle_timeout=10))
    _, channel = await service.channel("t1", record.id, "run processes in")
    job = await channel.start(JobSpec(cmd=["sleep", "100"]))
    events = channel.attach(job.pid, 0, True)
    reader = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.02)  # the stream is open and waiting for output
    clock.advance(60)
    assert await service.sweep() == []
    await channel.signal(job.pid, "KILL")
    assert (await reader).kind == "exit"
    await events.aclose()
    clock.advance(11)
    assert await service.sweep() == [record.id]


async def test_activity_is_flushed_at_most_every_five_seconds(parts: Parts) -> None:
    service, _, clock, store = parts
    record = await service.create("t1", CreateParams())
    await service.get("t1", record.id)
    await service.sweep()
    first = clock.now
    assert (await store.get_sandbox(record.id)).last_activity_at == first  # type: ignore[union-attr]
    clock.advance(1)
    await service.get("t1", record.id)
    await service.sweep()
    assert (await store.get_sandbox(record.id)).last_activity_at == first  # type: ignore[union-attr]
    clock.advance(5)
    await service.sweep()
    later = (await store.get_sandbox(record.id)).last_activity_at  # type: ignore[union-attr]
    assert later == first + timedelta(seconds=1)
    await service.get("t1", record.id)
    await service.idle.flush(force=True)
    assert (await store.get_sandbox(record.id)).last_activity_at == clock.now  # type: ignore[union-attr]


async def test_resize_a_stopped_sandbox_applies_at_start(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.lifecycle.stop("t1", record.id)
    resized = await service.lifecycle.update("t1", record.id, UpdateParams(vcpu=2, memory_mb=1024))
    assert resized.status == "stopped" and (resized.vcpu, resized.memory_mb) == (2, 1024)
    await service.lifecycle.start("t1", record.id)
    spec = runtime.boxes[record.id].spec
    assert (spec.vcpu, spec.memory_mb) == (2, 1024)
