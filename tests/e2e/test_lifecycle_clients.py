"""Stop/start, snapshots and updates through the SDK (sync and async) and the CLI."""

from __future__ import annotations

import contextlib
import json

import pytest

from sandbank import (
    AsyncSandbox,
    InvalidState,
    Sandbox,
    SandboxNotFound,
    SandboxPaused,
    SnapshotNotFound,
    Snapshots,
)
from tests.e2e.test_cli import ok, sandbank
from tests.support.server import ServerProcess


def test_sdk_stop_start_snapshot_restore(server: ServerProcess) -> None:
    creds = {"api_key": server.api_key, "base_url": server.url}
    sbx = Sandbox.create(**creds)
    clone: Sandbox | None = None
    try:
        sbx.files.write("note.txt", "one")
        assert sbx.stop().status == "stopped"
        assert (sbx.info.disk_bytes or 0) > 0
        with pytest.raises(InvalidState):
            sbx.commands.run("true")
        assert sbx.start().status == "running"
        assert sbx.files.read("note.txt") == "one"
        snap = sbx.snapshot("sdk-one")
        assert snap.name == "sdk-one" and snap.size_bytes > 0
        sbx.files.write("note.txt", "two")
        assert sbx.restore("sdk-one").status == "running"
        assert sbx.files.read("note.txt") == "one"
        assert sbx.restart().status == "running"
        clone = Sandbox.create(snapshot=snap.id, **creds)
        assert clone.files.read("note.txt") == "one"
        updated = sbx.update(vcpu=2, idle_timeout=600, on_timeout="pause", auto_resume=True)
        assert (updated.vcpu, updated.idle_timeout, updated.auto_resume) == (2, 600, True)
        with Snapshots(**creds) as snapshots:
            assert [s.id for s in snapshots.list(sbx.sandbox_id)] == [snap.id]
            assert snapshots.get("sdk-one") == snap
            snapshots.delete(snap.id)
            with pytest.raises(SnapshotNotFound):
                snapshots.get(snap.id)
    finally:
        for box in (sbx, clone):
            if box is not None:
                with contextlib.suppress(SandboxNotFound):
                    box.kill()


async def test_async_sdk_auto_resume(server: ServerProcess) -> None:
    creds = {"api_key": server.api_key, "base_url": server.url}
    async with await AsyncSandbox.create(**creds) as sbx:
        await sbx.pause()
        with pytest.raises(SandboxPaused):
            await sbx.commands.run("true")
        await sbx.update(auto_resume=True)
        assert (await sbx.commands.run("echo up")).stdout == "up\n"
        assert (await sbx.get_info()).status == "running"
        assert (await sbx.stop()).status == "stopped"
        assert (await sbx.start()).status == "running"


def test_cli_lifecycle(server: ServerProcess, client_env: dict[str, str]) -> None:
    info = json.loads(ok(client_env, "create", "--json"))
    sid = info["id"]
    snap_id = None
    try:
        assert json.loads(ok(client_env, "stop", sid, "--json"))["status"] == "stopped"
        assert "stopped" in ok(client_env, "info", sid)
        refused = sandbank(client_env, "pause", sid)
        assert refused.returncode != 0 and "invalid_state" in refused.stderr
        assert json.loads(ok(client_env, "start", sid, "--json"))["status"] == "running"
        snap = json.loads(ok(client_env, "snapshot", sid, "--name", "cli-snap", "--json"))
        snap_id = snap["id"]
        assert "cli-snap" in ok(client_env, "snapshots", "ls")
        assert json.loads(ok(client_env, "snapshots", "get", "cli-snap", "--json"))["id"] == snap_id
        restored = json.loads(ok(client_env, "restore", sid, "cli-snap", "--json"))
        assert restored["status"] == "running"
        resized = json.loads(
            ok(client_env, "update", sid, "--memory", "1024", "--idle-timeout", "900", "--json")
        )
        assert resized["memory_mb"] == 1024 and resized["idle_timeout"] == 900
        clone = json.loads(ok(client_env, "create", "--snapshot", "cli-snap", "--json"))
        ok(client_env, "kill", clone["id"])
        assert json.loads(ok(client_env, "restart", sid, "--json"))["status"] == "running"
        ok(client_env, "snapshots", "rm", snap_id)
        snap_id = None
        missing = sandbank(client_env, "snapshots", "get", "cli-snap")
        assert missing.returncode != 0 and "snapshot_not_found" in missing.stderr
    finally:
        if snap_id:
            sandbank(client_env, "snapshots", "rm", snap_id)
        ok(client_env, "kill", sid)
