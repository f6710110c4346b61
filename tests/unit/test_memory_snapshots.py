"""Memory snapshots in the service, the API and the SDK, over the fake runtime
(where a sandbox's "memory" is its jobs and files, deep-copied)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandbank import AsyncSandbox
from sandbank.errors import CheckpointUnsupported, InvalidState, SandboxPaused, SnapshotNotFound
from sandbank.runtime.base import JobSpec
from sandbank.runtime.fake_memory import MEMORY_BYTES
from sandbank.server.app import create_app
from sandbank.server.service.params import CreateParams
from sandbank.server.settings import Settings
from tests.unit.test_checkpoints import Parts, parts  # noqa: F401

KEY = "sk-test-memory-snapshots"


async def _with_job(made: Parts) -> tuple[str, int]:
    service, runtime, _, _ = made
    record = await service.create("t1", CreateParams(memory_mb=1024))
    runtime.boxes[record.id].files["/home/user/a"] = b"disk"
    job = await runtime.channel(record.id).start(JobSpec(cmd=["sleep", "100"]))
    return record.id, job.pid


async def test_take_and_create_copies(parts: Parts) -> None:  # noqa: F811
    service, runtime, _, store = parts
    source, pid = await _with_job(parts)
    snap = await service.snapshots.take("t1", source, "mem", memory=True)
    assert snap.memory and snap.size_bytes == len(b"disk") + MEMORY_BYTES
    assert (await store.get_snapshot(snap.id)) == snap
    await service.kill("t1", source)
    copies = [await service.create("t1", CreateParams(snapshot="mem")) for _ in range(2)]
    assert len({c.id for c in copies} | {source}) == 3
    for copy in copies:
        assert copy.status == "running" and copy.memory_mb == 1024  # the source's size
        jobs = await runtime.channel(copy.id).jobs()
        assert [(j.pid, j.running) for j in jobs] == [(pid, True)]
        assert runtime.boxes[copy.id].files["/home/user/a"] == b"disk"
    # Each its own copy.
    runtime.boxes[copies[0].id].files["/home/user/a"] = b"changed"
    assert runtime.boxes[copies[1].id].files["/home/user/a"] == b"disk"
    await service.snapshots.delete("t1", snap.id)
    assert snap.id not in runtime.memory_images and snap.id not in runtime.snapshots
    with pytest.raises(SnapshotNotFound):
        await service.create("t1", CreateParams(snapshot="mem"))


async def test_restore_in_place(parts: Parts) -> None:  # noqa: F811
    service, runtime, _, _ = parts
    sandbox_id, pid = await _with_job(parts)
    snap = await service.snapshots.take("t1", sandbox_id, None, memory=True)
    channel = runtime.channel(sandbox_id)
    await channel.signal(pid, "SIGKILL")
    runtime.boxes[sandbox_id].files["/home/user/a"] = b"later"
    await service.lifecycle.stop("t1", sandbox_id)
    restored = await service.snapshots.restore("t1", sandbox_id, snap.id)
    assert restored.status == "running" and restored.id == sandbox_id
    jobs = await runtime.channel(sandbox_id).jobs()
    assert [(j.pid, j.running) for j in jobs] == [(pid, True)]
    assert runtime.boxes[sandbox_id].files["/home/user/a"] == b"disk"
    # Another tenant's snapshot is not found, nor is its sandbox.
    other = await service.create("t2", CreateParams())
    with pytest.raises(SnapshotNotFound):
        await service.snapshots.restore("t2", other.id, snap.id)


async def test_states_and_unsupported(parts: Parts) -> None:  # noqa: F811
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    await service.pause("t1", record.id)
    with pytest.raises(SandboxPaused, match="resume it first"):
        await service.snapshots.take("t1", record.id, None, memory=True)
    await service.resume("t1", record.id)
    await service.lifecycle.stop("t1", record.id)
    with pytest.raises(InvalidState, match="nothing in memory"):
        await service.snapshots.take("t1", record.id, None, memory=True)
    await service.lifecycle.start("t1", record.id)
    runtime.checkpoint_unsupported = "no criu here"
    with pytest.raises(CheckpointUnsupported, match="no criu here"):
        await service.snapshots.take("t1", record.id, None, memory=True)
    plain = await service.snapshots.take("t1", record.id, None)
    assert not plain.memory
    assert await runtime.snapshot_ids() == {plain.id}


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


async def test_api_and_sdk(transport: httpx.ASGITransport) -> None:
    sbx = await AsyncSandbox.create(api_key=KEY, base_url="http://test", transport=transport)
    try:
        snap = await sbx.snapshot("m1", memory=True)
        assert snap.memory and snap.name == "m1"
        plain = await sbx.snapshot("d1")
        assert not plain.memory
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {KEY}"}
        ) as api:
            got = (await api.get("/v1/snapshots/m1")).json()
            assert got["memory"] is True and got["size_bytes"] == snap.size_bytes
            bad = await api.post(
                f"/v1/sandboxes/{sbx.sandbox_id}/snapshots", json={"memory": "yes"}
            )
            assert bad.status_code == 422, bad.text
            await api.post(f"/v1/sandboxes/{sbx.sandbox_id}/stop")
            stopped = await api.post(
                f"/v1/sandboxes/{sbx.sandbox_id}/snapshots", json={"memory": True}
            )
            assert stopped.status_code == 409 and "nothing in memory" in stopped.json()["message"]
            copy = await api.post("/v1/sandboxes", json={"snapshot": "m1"})
            assert copy.status_code == 201, copy.text
            restored = await api.post(
                f"/v1/sandboxes/{sbx.sandbox_id}/restore", json={"snapshot": "m1"}
            )
            assert restored.json()["status"] == "running"
            assert (await api.delete(f"/v1/sandboxes/{copy.json()['id']}")).status_code == 204
    finally:
        await sbx.kill()
