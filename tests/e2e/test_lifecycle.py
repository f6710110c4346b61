"""Stop, start, restart, live resize and idle timeouts against the real server:
what stays (the disk), what goes (processes, memory, network), and every
operation refused in a state that does not allow it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import run_cgroups
from tests.support.leaks import leftovers
from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]


def run(api: httpx.Client, sandbox_id: str, command: str) -> dict[str, Any]:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_stop_start_keeps_disk_restarts_processes(
    api: httpx.Client, make_sandbox: Make, server: ServerProcess
) -> None:
    sandbox_id = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    run(api, sandbox_id, "echo kept > ~/state.txt; nohup sleep 1000 >/dev/null 2>&1 &")
    before = api.get(f"{base}/network").json()

    stopped = api.post(f"{base}/stop")
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["status"] == "stopped" and body["disk_bytes"] > 0
    # Nothing but the disk image is left on the host.
    box = server.data_dir / "sandboxes" / sandbox_id
    assert sorted(p.name for p in box.iterdir()) <= ["agent.log", "disk.img", "runtime.json"]
    left = leftovers(server.data_dir, run_cgroups())
    assert [x for x in left if sandbox_id in x and "sandbox dir" not in x] == []
    assert api.post(f"{base}/stop").json()["status"] == "stopped"

    refused = api.post(f"{base}/exec", json={"command": "true"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "invalid_state" and refused.json()["state"] == "stopped"
    assert f"{base}/start" in refused.json()["message"]
    paused = api.post(f"{base}/pause")
    assert paused.status_code == 409 and paused.json()["state"] == "stopped"
    assert api.get(f"{base}/files", params={"path": "state.txt"}).status_code == 409

    started = api.post(f"{base}/start")
    assert started.status_code == 200 and started.json()["status"] == "running"
    assert api.post(f"{base}/start").json()["status"] == "running"
    out = run(api, sandbox_id, "cat ~/state.txt; pgrep -c sleep || true; hostname")
    lines = out["stdout"].splitlines()
    assert lines[0] == "kept" and lines[1] == "0"
    assert api.get(f"{base}/network").json() == before
    # Resume of a running sandbox is a no-op 200.
    assert api.post(f"{base}/resume").json()["status"] == "running"


def test_restart_and_stop_paused(api: httpx.Client, make_sandbox: Make) -> None:
    sandbox_id = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    run(api, sandbox_id, "echo 1 > /tmp/x; nohup sleep 1000 >/dev/null 2>&1 &")
    restarted = api.post(f"{base}/restart")
    assert restarted.status_code == 200 and restarted.json()["status"] == "running"
    assert run(api, sandbox_id, "cat /tmp/x; pgrep -c sleep || true")["stdout"] == "1\n0\n"

    assert api.post(f"{base}/pause").status_code == 200
    stopped = api.post(f"{base}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert api.post(f"{base}/restart").json()["status"] == "running"
    assert api.delete(base).status_code == 204


def test_stopped_frees_quota(api: httpx.Client, server: ServerProcess) -> None:
    key = api.post("/v1/keys", json={"tenant": "stopquota"}).json()["key"]
    assert api.put("/v1/tenants/stopquota/quota", json={"max_sandboxes": 1}).status_code == 200
    with server.client(key) as them:
        first = them.post("/v1/sandboxes", json={}).json()["id"]
        try:
            assert them.post("/v1/sandboxes", json={}).status_code == 429
            assert them.post(f"/v1/sandboxes/{first}/stop").status_code == 200
            second = them.post("/v1/sandboxes", json={})
            assert second.status_code == 201, second.text
            refused = them.post(f"/v1/sandboxes/{first}/start")
            assert refused.status_code == 429
            assert them.get(f"/v1/sandboxes/{first}").json()["status"] == "stopped"
            assert them.delete(f"/v1/sandboxes/{second.json()['id']}").status_code == 204
            assert them.post(f"/v1/sandboxes/{first}/start").json()["status"] == "running"
        finally:
            assert them.delete(f"/v1/sandboxes/{first}").status_code == 204


def test_delete_stopped_frees_disk(api: httpx.Client, server: ServerProcess) -> None:
    sandbox_id = api.post("/v1/sandboxes", json={}).json()["id"]
    run(api, sandbox_id, "head -c 20000000 /dev/urandom > ~/blob")
    stopped = api.post(f"/v1/sandboxes/{sandbox_id}/stop").json()
    assert stopped["disk_bytes"] >= 20_000_000
    box = server.data_dir / "sandboxes" / sandbox_id
    assert (box / "disk.img").exists()
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert not box.exists()
    assert api.get(f"/v1/sandboxes/{sandbox_id}").status_code == 404


def test_live_resize(api: httpx.Client, make_sandbox: Make) -> None:
    sandbox_id = make_sandbox(memory_mb=512)["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    grown = api.patch(base, json={"vcpu": 2, "memory_mb": 1024})
    assert grown.status_code == 200, grown.text
    assert (grown.json()["vcpu"], grown.json()["memory_mb"]) == (2, 1024)
    limit = run(api, sandbox_id, "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")["stdout"]  # fmt: skip
    assert int(limit) == 1024 * 2**20
    # A process holds ~600 MB, then the sandbox is asked to make do with 512 MB.
    hold = "import time; b = bytearray(600 * 2**20); open('/tmp/ready', 'w'); time.sleep(600)"
    run(api, sandbox_id, f'nohup python3 -c "{hold}" >/dev/null 2>&1 & '
        "while [ ! -e /tmp/ready ]; do sleep 0.05; done")  # fmt: skip
    shrunk = api.patch(base, json={"memory_mb": 512})
    assert shrunk.status_code == 409, shrunk.text
    assert api.get(base).json()["memory_mb"] == 1024
    assert api.patch(base, json={"memory_mb": 10**7}).status_code == 422
    assert api.patch(base, json={"disk_gb": 5}).status_code == 422


def test_idle_timeout_kill_and_pause(api: httpx.Client, make_sandbox: Make) -> None:
    killed = make_sandbox(idle_timeout=2)["id"]
    paused = make_sandbox(idle_timeout=2, on_timeout="pause", auto_resume=True)["id"]
    kept = make_sandbox()["id"]
    assert api.patch(f"/v1/sandboxes/{kept}", json={"idle_timeout": 2}).status_code == 200
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        # Activity keeps one of them alive.
        run(api, kept, "true")
        time.sleep(0.5)
    gone = api.get(f"/v1/sandboxes/{killed}")
    assert gone.status_code == 404 and "idle" in gone.json()["message"]
    assert api.get(f"/v1/sandboxes/{paused}").json()["status"] == "paused"
    # auto_resume: the next exec resumes it instead of answering 409.
    assert run(api, paused, "echo back")["stdout"] == "back\n"
    assert api.get(f"/v1/sandboxes/{paused}").json()["status"] == "running"
    assert api.get(f"/v1/sandboxes/{kept}").json()["status"] == "running"
    bad = api.post("/v1/sandboxes", json={"idle_timeout": 5, "on_timeout": "sleep"})
    assert bad.status_code == 422

