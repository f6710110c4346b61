"""kill -9 of the server with sandboxes stopped, mid-stop and with snapshots:
after the restart stopped ones start again on their disks, an interrupted stop
is finished, snapshots still restore, and stray snapshot files are removed."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess

import pytest

from sandbank.runtime.linux.cgroups import CgroupLayout
from tests.conftest import is_root, new_server, run_cgroups
from tests.support.leaks import leftovers

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")


def test_kill_9_with_stopped_and_snapshots() -> None:
    srv = new_server("liferestart")
    srv.start()
    try:
        with srv.client() as api:
            stopped = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            midstop = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            for sid in (stopped, midstop):
                api.post(f"/v1/sandboxes/{sid}/exec", json={"command": f"echo {sid} > ~/id"})
            snap = api.post(f"/v1/sandboxes/{stopped}/snapshots", json={"name": "keep"}).json()
            api.post(f"/v1/sandboxes/{stopped}/exec", json={"command": "echo later > ~/id"})
            assert api.post(f"/v1/sandboxes/{stopped}/stop").json()["status"] == "stopped"
        srv.stop(signal.SIGKILL)
        # As if the server had died in the middle of stopping the second one,
        # and in the middle of taking a snapshot (files, no record).
        with sqlite3.connect(srv.data_dir / "sandbank.db") as db:
            db.execute("UPDATE sandboxes SET status = 'stopping' WHERE id = ?", (midstop,))
        stray = srv.data_dir / "snapshots" / "snapstray"
        stray.mkdir()
        (stray / "disk.img.tmp").write_bytes(b"partial")
        srv.start()
        with srv.client() as api:
            assert api.get(f"/v1/sandboxes/{stopped}").json()["status"] == "stopped"
            assert api.get(f"/v1/sandboxes/{midstop}").json()["status"] == "stopped"
            assert not stray.exists()
            left = leftovers(srv.data_dir, run_cgroups())
            ours = [x for x in left if stopped in x or midstop in x]
            assert [x for x in ours if "sandbox dir" not in x] == []
            for sid, want in ((stopped, "later"), (midstop, midstop)):
                assert api.post(f"/v1/sandboxes/{sid}/start").json()["status"] == "running"
                out = api.post(f"/v1/sandboxes/{sid}/exec", json={"command": "cat ~/id"}).json()
                assert out["stdout"] == f"{want}\n"
            restored = api.post(f"/v1/sandboxes/{stopped}/restore", json={"snapshot": "keep"})
            assert restored.status_code == 200, restored.text
            out = api.post(f"/v1/sandboxes/{stopped}/exec", json={"command": "cat ~/id"}).json()
            assert out["stdout"] == f"{stopped}\n"
            for sid in (stopped, midstop):
                assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
            assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204
            assert not (srv.data_dir / "snapshots" / snap["id"]).exists()
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()


def test_stopped_past_deadline_is_killed_after_restart() -> None:
    srv = new_server("lifedeadline")
    srv.start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            assert api.post(f"/v1/sandboxes/{sid}/stop").status_code == 200
        srv.stop(signal.SIGKILL)
        with sqlite3.connect(srv.data_dir / "sandbank.db") as db:
            past = "2000-01-01 00:00:00"
            db.execute("UPDATE sandboxes SET expires_at = ? WHERE id = ?", (past, sid))
        srv.start()
        with srv.client() as api:
            gone = api.get(f"/v1/sandboxes/{sid}")
            assert gone.status_code == 404 and "timeout" in gone.json()["message"]
        assert not (srv.data_dir / "sandboxes" / sid).exists()
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()


def test_restart_thaws_a_sandbox_left_frozen_mid_snapshot() -> None:
    srv = new_server("lifethaw")
    srv.start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
        srv.stop(signal.SIGKILL)
        # What a server killed in the middle of a snapshot leaves: the sandbox's
        # cgroup and its file system both frozen.
        box = srv.data_dir / "sandboxes" / sid
        record = json.loads((box / "runtime.json").read_text())
        CgroupLayout.detect().cgroup(record["cgroups_path"]).freeze()
        subprocess.run(["fsfreeze", "-f", str(box / "disk")], check=True)
        srv.start()
        with srv.client() as api:
            assert api.get(f"/v1/sandboxes/{sid}").json()["status"] == "running"
            out = api.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo ok > ~/w; cat ~/w"})
            assert out.status_code == 200 and out.json()["stdout"] == "ok\n"
            assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()
