"""Pause and resume over the fake runtime and a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandbank import AsyncSandbox
from sandbank.errors import InvalidState, QuotaExceeded, SandboxNotFound, SandboxPaused
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
    service = SandboxService(store, runtime, LIMITS, Quota(2, 8, 4096), clock, Telemetry())
    yield service, runtime, clock, store
    await store.close()


def test_table() -> None:
    assert S.PAUSED in TRANSITIONS[S.RUNNING]
    assert TRANSITIONS[S.PAUSED] == {S.RUNNING, S.KILLING, S.STOPPING}
    assert S.PAUSED not in TRANSITIONS[S.POOLED]
    assert S.PAUSED in ACTIVE


async def test_pause_resume_idempotent(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    paused = await service.pause("t1", record.id)
    assert paused.status == "paused" and runtime.boxes[record.id].paused
    assert (await service.pause("t1", record.id)).status == "paused"
    assert (await service.get("t1", record.id)).status == "paused"
    resumed = await service.resume("t1", record.id)
    assert resumed.status == "running" and not runtime.boxes[record.id].paused
    assert (await service.resume("t1", record.id)).status == "running"
    result = await service.exec("t1", record.id, ExecParams(command="echo hi"))
    assert result.stdout == b"hi\n"


async def test_operations_on_paused_are_409(parts: Parts) -> None:
    service, _, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.pause("t1", record.id)
    with pytest.raises(SandboxPaused, match="resume") as caught:
        await service.exec("t1", record.id, ExecParams(command="echo hi"))
    assert caught.value.code == "sandbox_paused" and caught.value.status == 409
    assert isinstance(caught.value, InvalidState)
    with pytest.raises(SandboxPaused):
        await service.files("t1", record.id)
    with pytest.raises(SandboxPaused):
        await service.usage("t1", record.id)
    with pytest.raises(SandboxPaused):
        await service.channel("t1", record.id, "start a process in")


async def test_pause_others(parts: Parts) -> None:
    service, _, _, _ = parts
    record = await service.create("t1", CreateParams())
    with pytest.raises(SandboxNotFound):
        await service.pause("t2", record.id)
    await service.kill("t1", record.id)
    with pytest.raises(SandboxNotFound):
        await service.pause("t1", record.id)
    with pytest.raises(SandboxNotFound):
        await service.resume("t1", record.id)


async def test_paused_counts_against_quota(parts: Parts) -> None:
    service, _, _, _ = parts
    first = await service.create("t1", CreateParams())
    await service.create("t1", CreateParams())
    await service.pause("t1", first.id)
    with pytest.raises(QuotaExceeded):
        await service.create("t1", CreateParams())


async def test_kill_paused(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.pause("t1", record.id)
    await service.kill("t1", record.id)
    assert runtime.destroyed == [record.id] and runtime.boxes == {}
    with pytest.raises(SandboxNotFound, match="killed"):
        await service.get("t1", record.id)


async def test_sweep_kills_expired_paused(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create("t1", CreateParams(timeout=10))
    await service.pause("t1", record.id)
    clock.advance(5)
    assert await service.sweep() == []
    await service.set_timeout("t1", record.id, 10)
    clock.advance(11)
    assert await service.sweep() == [record.id]
    assert runtime.boxes == {}
    with pytest.raises(SandboxNotFound, match="timeout"):
        await service.get("t1", record.id)


async def test_reconcile_adopts_paused(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create("t1", CreateParams(timeout=100))
    await service.pause("t1", record.id)
    clock.advance(10)
    report = await service.reconcile()
    assert report["adopted"] == [record.id]
    assert runtime.boxes[record.id].paused
    assert (await service.get("t1", record.id)).status == "paused"
    assert (await service.resume("t1", record.id)).status == "running"


async def test_reconcile_kills_expired_paused(parts: Parts) -> None:
    service, runtime, clock, _ = parts
    record = await service.create("t1", CreateParams(timeout=5))
    await service.pause("t1", record.id)
    clock.advance(10)
    report = await service.reconcile()
    assert report["killed"] == [record.id] and runtime.boxes == {}


KEY = "sbk_unit_pause_key"


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


async def test_api_pause_resume(transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {KEY}"}
    ) as api:
        sandbox_id = (await api.post("/v1/sandboxes", json={})).json()["id"]
        resp = await api.post(f"/v1/sandboxes/{sandbox_id}/pause")
        assert resp.status_code == 200 and resp.json()["status"] == "paused"
        assert (await api.post(f"/v1/sandboxes/{sandbox_id}/pause")).status_code == 200
        resp = await api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": "echo hi"})
        assert resp.status_code == 409
        body = resp.json()
        assert body["code"] == "sandbox_paused"
        assert f"/v1/sandboxes/{sandbox_id}/resume" in body["message"]
        listed = (await api.get("/v1/sandboxes", params={"status": "paused"})).json()
        assert [s["id"] for s in listed["data"]] == [sandbox_id]
        resp = await api.post(f"/v1/sandboxes/{sandbox_id}/resume")
        assert resp.status_code == 200 and resp.json()["status"] == "running"
        resp = await api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": "echo hi"})
        assert resp.status_code == 200
        missing = await api.post("/v1/sandboxes/nosuchsandbox000/pause")
        assert missing.status_code == 404 and missing.json()["code"] == "sandbox_not_found"
        await api.post(f"/v1/sandboxes/{sandbox_id}/pause")
        assert (await api.delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204


async def test_sdk_pause_resume(transport: httpx.ASGITransport) -> None:
    sbx = await AsyncSandbox.create(api_key=KEY, base_url="http://test", transport=transport)
    try:
        assert (await sbx.pause()).status == "paused"
        assert (await sbx.get_info()).status == "paused"
        with pytest.raises(SandboxPaused):
            await sbx.commands.run("echo hi")
        assert (await sbx.resume()).status == "running"
        assert (await sbx.commands.run("echo hi")).stdout == "hi\n"
    finally:
        await sbx.kill()
