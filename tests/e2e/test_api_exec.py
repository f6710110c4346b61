"""POST /v1/sandboxes/{id}/exec against real sandboxes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def box(server: Any) -> Any:
    with server.client() as client:
        info = client.post("/v1/sandboxes", json={"env": {"SANDBOX_VAR": "from-create"}}).json()
        yield info
        assert client.delete(f"/v1/sandboxes/{info['id']}").status_code == 204


def run(api: httpx.Client, box: dict[str, Any], **body: Any) -> dict[str, Any]:
    resp = api.post(f"/v1/sandboxes/{box['id']}/exec", json=body)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_issue_example(api: httpx.Client, box: dict[str, Any]) -> None:
    out = run(api, box, command="python3 -c 'print(40+2)'")
    assert out["stdout"] == "42\n" and out["exit_code"] == 0 and not out["timed_out"]
    assert out["duration_ms"] > 0


def test_argv_exit_codes_and_stderr(api: httpx.Client, box: dict[str, Any]) -> None:
    out = run(api, box, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out["stdout"], out["stderr"], out["exit_code"]) == ("out\n", "err\n", 3)
    out = run(api, box, cmd=["no-such-binary"])
    assert out["exit_code"] == 127 or "no-such-binary" in out["stderr"]


def test_users_env_cwd_stdin(api: httpx.Client, box: dict[str, Any]) -> None:
    assert run(api, box, command="id -un; echo $HOME; pwd")["stdout"].split() == [
        "user",
        "/home/user",
        "/home/user",
    ]
    assert run(api, box, command="id -u", user="root")["stdout"] == "0\n"
    out = run(api, box, command="echo $SANDBOX_VAR $EXTRA", env={"EXTRA": "per-call"})
    assert out["stdout"] == "from-create per-call\n"
    assert run(api, box, command="pwd", cwd="/tmp")["stdout"] == "/tmp\n"
    assert run(api, box, cmd=["cat"], stdin="piped\nin")["stdout"] == "piped\nin"
    assert run(api, box, command="sudo -n id -u")["stdout"] == "0\n"


def test_timeout_kills_the_whole_process_group(api: httpx.Client, box: dict[str, Any]) -> None:
    out = run(api, box, command="sleep 300 & sleep 301; echo never", timeout=1)
    assert out["timed_out"] is True
    assert "never" not in out["stdout"]
    left = run(api, box, command="pgrep -f 'sleep 30[01]' || true")
    assert left["stdout"] == ""


def test_bad_exec_input(api: httpx.Client, box: dict[str, Any]) -> None:
    url = f"/v1/sandboxes/{box['id']}/exec"
    for body in (
        {},
        {"cmd": ["true"], "command": "true"},
        {"cmd": []},
        {"cmd": "true"},
        {"command": "true", "user": "mallory"},
        {"command": "true", "timeout": -1},
        {"command": "true", "bogus": 1},
    ):
        resp = api.post(url, json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["code"] == "invalid_request"
    resp = api.post(url, json={"command": "true", "cwd": "/does/not/exist"})
    assert resp.status_code in (400, 404) and resp.json()["message"]


def test_metrics_come_from_the_kernel(api: httpx.Client, box: dict[str, Any]) -> None:
    resp = api.get(f"/v1/sandboxes/{box['id']}/metrics")
    assert resp.status_code == 200, resp.text
    m = resp.json()
    assert m["memory_limit_bytes"] == 512 * 2**20
    assert 0 < m["memory_bytes"] < m["memory_limit_bytes"]
    assert m["pids"] >= 1 and m["pids_limit"] == 1024
    assert 0 < m["disk_limit_bytes"] <= 2**30 and m["disk_bytes"] >= 0
    assert m["cpu_percent"] >= 0 and m["cpu_usage_seconds"] > 0
