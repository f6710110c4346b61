"""kill -9 of the server loses nothing: records, running sandboxes, deadlines."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from tests.conftest import is_root, new_server, run_cgroups
from tests.support.leaks import leftovers

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")


def test_kill_9_and_restart_reconciles() -> None:
    srv = new_server("restart")
    srv.start()
    try:
        with srv.client() as api:
            keeper = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            short = api.post("/v1/sandboxes", json={"timeout": 3}).json()["id"]
            orphan = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            api.put(
                f"/v1/sandboxes/{keeper}/files", params={"path": "state.txt"}, content=b"kept\n"
            )
            api.post(
                f"/v1/sandboxes/{keeper}/exec",
                json={"command": "nohup sleep 1000 >/dev/null 2>&1 &"},
            )
        srv.stop(signal.SIGKILL)
        # While the server is down: one deadline passes, and one record vanishes
        # (as if the store had been restored from an older backup).
        with sqlite3.connect(srv.data_dir / "sandbank.db") as db:
            db.execute("DELETE FROM sandboxes WHERE id = ?", (orphan,))
        time.sleep(4)
        srv.start()
        with srv.client() as api:
            info = api.get(f"/v1/sandboxes/{keeper}")
            assert info.status_code == 200 and info.json()["status"] == "running"
            out = api.post(
                f"/v1/sandboxes/{keeper}/exec", json={"command": "cat ~/state.txt; pgrep -c sleep"}
            ).json()
            assert out["stdout"] == "kept\n1\n"
            gone = api.get(f"/v1/sandboxes/{short}")
            assert gone.status_code == 404 and "timeout" in gone.json()["message"]
            assert api.get(f"/v1/sandboxes/{orphan}").status_code == 404
            assert not [
                x for x in leftovers(srv.data_dir, run_cgroups()) if orphan in x or short in x
            ]
            assert api.delete(f"/v1/sandboxes/{keeper}").status_code == 204
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()
