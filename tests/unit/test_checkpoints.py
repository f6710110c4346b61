"""Hibernate, wake and fork in the service, the API and the SDK, over the fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandbank import AsyncSandbox
from sandbank.errors import CheckpointUnsupported, InvalidState, QuotaExceeded, ValidationFailed
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.app import create_app
from sandbank.server.service.lifecycle import ACTIVE, TRANSITIONS, SandboxState
from sandbank.server.service.params import CreateParams, ExecParams
from sandbank.server.service.policy import Quota
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.settings import Settings
from sandbank.server.store.sql import SqlStore
from tests.unit.test_service import LIMITS, Clock

S = SandboxState
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


def test_table() -> None:
    assert S.HIBERNATING in TRANSITIONS[S.RUNNING]
    assert TRANSITIONS[S.HIBERNATED] == {S.WAKING, S.KILLING}
    assert S.RUNNING in TRANSITIONS[S.WAKING] and S.HIBERNATED in TRANSITIONS[S.WAKING]
    assert S.HIBERNATED in ACTIVE


async def test_hibernate_wake_idempotent(parts: Parts) -> None:
    service, runtime, _, _ = parts
    cp = service.checkpoints
    record = await service.create("t1", CreateParams())
    runtime.boxes[record.id].files["/home/user/a"] = b"kept"
    hibernated = await cp.hibernate("t1", record.id)
    assert hibernated.status == "hibernated" and not runtime.boxes[record.id].alive
    assert (await cp.hibernate("t1", record.id)).status == "hibernated"
    with pytest.raises(InvalidState, match="wake it first"):
        await service.exec("t1", record.id, ExecParams(command="echo hi"))
    woken = await cp.wake("t1", record.id)
    assert woken.status == "running" and runtime.boxes[record.id].files["/home/user/a"] == b"kept"
    assert (await cp.wake("t1", record.id)).status == "running"
    assert runtime.hibernated_image(record.id) is None


async def test_wake_needs_hibernated_and_kill_works_hibernated(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.pause("t1", record.id)
    with pytest.raises(InvalidState):
        await service.checkpoints.hibernate("t1", record.id)
    await service.resume("t1", record.id)
    await service.checkpoints.hibernate("t1", record.id)
    await service.kill("t1", record.id)
    assert runtime.boxes == {} and runtime.images == {}


async def test_unsupported_host_answers_why(parts: Parts) -> None:
    service, runtime, _, _ = parts
    runtime.checkpoint_unsupported = "criu fails 'criu check'"
    record = await service.create("t1", CreateParams())
    with pytest.raises(CheckpointUnsupported, match="criu check") as caught:
        await service.checkpoints.hibernate("t1", record.id)
    assert caught.value.status == 501
    with pytest.raises(CheckpointUnsupported):
        await service.checkpoints.fork("t1", record.id, 1)
    assert (await service.get("t1", record.id)).status == "running"


async def test_fork(parts: Parts) -> None:
    service, runtime, _, _ = parts
    source = await service.create("t1", CreateParams(metadata={"k": "v"}))
    runtime.boxes[source.id].files["/home/user/a"] = b"shared"
    copies = await service.checkpoints.fork("t1", source.id, 2)
    assert len({c.id for c in copies} | {source.id}) == 3
    assert all(c.status == "running" and c.metadata == {"k": "v"} for c in copies)
    assert runtime.boxes[source.id].alive
    for c in copies:
        assert runtime.boxes[c.id].files["/home/user/a"] == b"shared"
    runtime.boxes[copies[0].id].files["/home/user/b"] = b"own"
    assert "/home/user/b" not in runtime.boxes[copies[1].id].files
    assert runtime.images == {}, "the fork's image is discarded"
    # The quota counts copies: 3 sandboxes at most.
    with pytest.raises(QuotaExceeded):
        await service.checkpoints.fork("t1", source.id, 1)
    with pytest.raises(ValidationFailed):
        await service.checkpoints.fork("t1", copies[0].id, 0)


async def test_reconcile_keeps_hibernated(parts: Parts) -> None:
    service, _, clock, _ = parts
    keep = await service.create("t1", CreateParams(timeout=100))
    await service.checkpoints.hibernate("t1", keep.id)
    report = await service.reconcile()
    assert report["hibernated"] == [keep.id] and report["orphans"] == []
    assert (await service.checkpoints.wake("t1", keep.id)).status == "running"
    await service.checkpoints.hibernate("t1", keep.id)
    clock.advance(200)
    assert keep.id in await service.sweep(), "the deadline runs while hibernated"


KEY = "sbk_unit_checkpoint_key"


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


async def test_api(transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {KEY}"}
    ) as api:
        sandbox_id = (await api.post("/v1/sandboxes", json={})).json()["id"]
        base = f"/v1/sandboxes/{sandbox_id}"
        resp = await api.post(f"{base}/hibernate")
        assert resp.status_code == 200 and resp.json()["status"] == "hibernated"
        resp = await api.post(f"{base}/exec", json={"command": "echo hi"})
        assert resp.status_code == 409 and f"{base}/wake" in resp.json()["message"]
        resp = await api.post(f"{base}/fork", json={"count": 1})
        assert resp.status_code == 409 and resp.json()["code"] == "invalid_state"
        assert (await api.post(f"{base}/wake")).json()["status"] == "running"
        resp = await api.post(f"{base}/fork", json={"count": 2})
        assert resp.status_code == 201, resp.text
        assert len(resp.json()["data"]) == 2
        bad = await api.post(f"{base}/fork", json={"count": "many"})
        assert bad.status_code == 400 or bad.status_code == 422
        assert (await api.delete(base)).status_code == 204


async def test_sdk(transport: httpx.ASGITransport) -> None:
    sbx = await AsyncSandbox.create(api_key=KEY, base_url="http://test", transport=transport)
    try:
        assert (await sbx.hibernate()).status == "hibernated"
        assert (await sbx.wake()).status == "running"
        copies = await sbx.fork(2)
        assert [c.info.status for c in copies] == ["running", "running"]
        assert (await copies[0].commands.run("echo hi")).stdout == "hi\n"
        for c in copies:
            await c.kill()
    finally:
        await sbx.kill()


async def test_reconcile_settles_interrupted_hibernate_and_wake(parts: Parts) -> None:
    service, runtime, _, store = parts
    alive = await service.create("t1", CreateParams(timeout=100))
    saved = await service.create("t1", CreateParams(timeout=100))
    await service.checkpoints.hibernate("t1", saved.id)
    # As a crash would leave them: still running, or already saved.
    await store.update_sandbox(alive.id, {"status": S.HIBERNATING})
    await store.update_sandbox(saved.id, {"status": S.WAKING})
    report = await service.reconcile()
    assert alive.id in report["adopted"] and report["hibernated"] == [saved.id]
    assert (await service.get("t1", alive.id)).status == "running"
    assert (await service.get("t1", saved.id)).status == "hibernated"
    assert runtime.boxes[alive.id].alive
