"""Memory snapshots against the real server (runc + CRIU): a process holding a
random number in memory and a counter is snapshotted, its sandbox killed, and
new sandboxes made from the snapshot answer with the same number and count on;
restore in place; and a create from the snapshot after the server was killed
with SIGKILL and restarted."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys

import httpx
import pytest

from sandbank import Sandbox, SandboxNotFound, Snapshots
from sandbank.errors import CheckpointUnsupported
from tests.conftest import is_root, new_server, run_cgroups
from tests.support import holder
from tests.support.leaks import leftovers
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")


def _sh(api: httpx.Client, sandbox_id: str, command: str) -> str:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["exit_code"] == 0, body
    return str(body["stdout"]).strip()


def _report(api: httpx.Client, sandbox_id: str) -> tuple[int, int]:
    secret, count = _sh(api, sandbox_id, holder.ASK).split()
    return int(secret), int(count)


def _create(api: httpx.Client, **body: object) -> str:
    resp = api.post("/v1/sandboxes", json={"timeout": 600, **body})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "running"
    return str(resp.json()["id"])


IP = "ip -4 -o addr show eth0 | awk '{print $4}'"


def test_memory_snapshot_create_restore_and_restart() -> None:
    srv = new_server("memsnap")
    srv.start()
    try:
        with srv.client() as api:
            source = _create(api)
            _sh(api, source, holder.START)
            _sh(api, source, "echo from-source > ~/kept.txt")
            secret, before = _report(api, source)
            resp = api.post(
                f"/v1/sandboxes/{source}/snapshots", json={"name": "mem", "memory": True}
            )
            if resp.status_code == 501:
                pytest.skip(resp.json()["message"])
            assert resp.status_code == 201, resp.text
            snap = resp.json()
            assert snap["memory"] is True
            folder = srv.data_dir / "snapshots" / snap["id"]
            assert (folder / "memory").is_dir() and (folder / "disk.img").is_file()
            # Counts disk and memory: the holder's python alone is megabytes.
            assert snap["size_bytes"] > (folder / "disk.img").stat().st_blocks * 512
            assert api.get("/v1/snapshots/mem").json()["memory"] is True
            # The source ran on, and its end does not touch the snapshot.
            assert _report(api, source)[1] >= before
            assert api.delete(f"/v1/sandboxes/{source}").status_code == 204

            copies = [_create(api, snapshot="mem") for _ in range(2)]
            assert len({source, *copies}) == 3
            ips = set()
            for copy in copies:
                got_secret, count = _report(api, copy)
                assert got_secret == secret and count >= before
                assert _sh(api, copy, "cat ~/kept.txt") == "from-source"
                ips.add(_sh(api, copy, IP))
            assert len(ips) == 2, ips
            _sh(api, copies[0], "echo only-here > ~/kept.txt")
            assert _sh(api, copies[1], "cat ~/kept.txt") == "from-source"

            # In place: the copy's container and disk are replaced, same id.
            target = copies[0]
            _sh(api, target, "kill $(cat /tmp/holder.pid)")
            resp = api.post(f"/v1/sandboxes/{target}/restore", json={"snapshot": "mem"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "running" and resp.json()["id"] == target
            assert _report(api, target)[0] == secret
            assert _sh(api, target, "cat ~/kept.txt") == "from-source"

            # A stopped sandbox has nothing in memory to snapshot.
            stopped = copies[1]
            assert api.post(f"/v1/sandboxes/{stopped}/stop").status_code == 200
            refused = api.post(f"/v1/sandboxes/{stopped}/snapshots", json={"memory": True})
            assert refused.status_code == 409, refused.text
            assert "nothing in memory" in refused.json()["message"]

        srv.stop(signal.SIGKILL)
        srv.start()
        with srv.client() as api:
            after = _create(api, snapshot="mem")
            assert _report(api, after)[0] == secret
            assert _report(api, copies[0])[0] == secret  # adopted, still answering
            for sid in (after, *copies):
                assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
            assert api.delete("/v1/snapshots/mem").status_code == 204
            assert not folder.exists()
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()


def test_sdk_and_cli(server: ServerProcess, client_env: dict[str, str]) -> None:
    creds = {"base_url": server.url, "api_key": server.api_key}
    sbx = Sandbox.create(**creds)
    made: list[Sandbox] = [sbx]
    try:
        sbx.commands.run(holder.START)
        secret = int(sbx.commands.run(holder.ASK).stdout.split()[0])
        try:
            taken = sbx.snapshot("sdk-mem", memory=True)
        except CheckpointUnsupported as exc:
            pytest.skip(str(exc))
        assert taken.memory and taken.name == "sdk-mem"
        done = subprocess.run(
            [sys.executable, "-m", "sandbank", "snapshot", sbx.sandbox_id, "--memory", "--json"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        by_cli = json.loads(done.stdout)
        assert by_cli["memory"] is True
        made.append(Sandbox.create(snapshot=by_cli["id"], **creds))
        assert int(made[-1].commands.run(holder.ASK).stdout.split()[0]) == secret
        with Snapshots(**creds) as snapshots:
            assert snapshots.get("sdk-mem").memory
            for snap_id in (taken.id, by_cli["id"]):
                snapshots.delete(snap_id)
                assert not (server.data_dir / "snapshots" / snap_id).exists()
    finally:
        for box in made:
            with contextlib.suppress(SandboxNotFound):
                box.kill()
