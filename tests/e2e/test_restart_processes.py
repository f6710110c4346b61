"""kill -9 of the server: background processes go on, and a restarted server
reads their output so far, their later output and their exit code; a streamed
(foreground) command goes with the server that streamed it."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import is_root, new_server, run_cgroups
from tests.support.leaks import leftovers

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")

SCRIPT = (
    "echo before; echo warn >&2; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after; exit 5"
)


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line]


def test_background_processes_outlive_a_kill_9_of_the_server() -> None:
    srv = new_server("restart-processes")
    srv.start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            base = f"/v1/sandboxes/{sid}/processes"
            pid = api.post(base, json={"command": SCRIPT, "tag": "survivor"}).json()["pid"]
            deadline = time.monotonic() + 10
            while api.get(f"{base}/{pid}").json()["output_bytes"] < len("before\nwarn\n"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # A foreground command streamed by the server about to die.
            body = {"command": "sleep 605", "timeout": 0}
            with api.stream("POST", f"/v1/sandboxes/{sid}/exec/stream", json=body) as resp:
                fg = json.loads(next(resp.iter_lines()))["pid"]
                srv.stop(signal.SIGKILL)
        srv.start()
        with srv.client() as api:
            info = api.get(f"{base}/{pid}").json()
            assert info["running"] is True and info["tag"] == "survivor"
            events = _events(api.get(f"{base}/{pid}/output"))
            assert [(e["type"], e["data"]) for e in events] == [
                ("stdout", "before\n"),
                ("stderr", "warn\n"),
            ]
            # Later output and the exit, followed live by the new server.
            with api.stream(
                "GET", f"{base}/{pid}/output", params={"follow": "true", "offset": 12}
            ) as live:
                lines = live.iter_lines()
                api.post(f"/v1/sandboxes/{sid}/exec", json={"command": "touch /tmp/go"})
                later = [json.loads(line) for line in lines if line]
            assert [e["type"] for e in later] == ["stdout", "exit"]
            assert later[0]["data"] == "after\n" and later[-1]["exit_code"] == 5
            waited = api.post(f"{base}/{pid}/wait", params={"timeout": 10}).json()
            assert waited["exit_code"] == 5 and waited["running"] is False
            full = _events(api.get(f"{base}/{pid}/output"))
            assert "".join(e["data"] for e in full if e["type"] == "stdout") == "before\nafter\n"
            # The streamed command lost its server, and went with it.
            gone = api.get(f"{base}/{fg}").json()
            assert gone["kind"] == "foreground" and gone["running"] is False
            assert gone["signal"] == 9
            assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()
