"""Hibernate, wake and fork against the real server (runc + CRIU), and a wake
after the server was killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbank import Sandbox, SandboxNotFound
from tests.conftest import is_root, new_server, run_cgroups
from tests.support import holder
from tests.support.leaks import leftovers
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")


@pytest.fixture(autouse=True)
def needs_criu(api: httpx.Client, make_sandbox: Callable[..., dict[str, Any]]) -> None:
    probe = make_sandbox()["id"]
    resp = api.post(f"/v1/sandboxes/{probe}/hibernate")
    if resp.status_code == 501:
        pytest.skip(resp.json()["message"])
    assert resp.status_code == 200, resp.text


def _sh(api: httpx.Client, sandbox_id: str, command: str) -> str:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["exit_code"] == 0, body
    return str(body["stdout"]).strip()


def _secret(api: httpx.Client, sandbox_id: str) -> int:
    return int(_sh(api, sandbox_id, holder.ASK).split()[0])


def test_hibernate_wake_over_http(
    api: httpx.Client, make_sandbox: Callable[..., dict[str, Any]]
) -> None:
    sandbox_id = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    _sh(api, sandbox_id, holder.START)
    _sh(api, sandbox_id, "echo written > ~/before.txt")
    secret = _secret(api, sandbox_id)

    resp = api.post(f"{base}/hibernate")
    assert resp.status_code == 200 and resp.json()["status"] == "hibernated"
    assert api.get(base).json()["status"] == "hibernated"
    refused = api.post(f"{base}/exec", json={"command": "true"})
    assert refused.status_code == 409 and f"{base}/wake" in refused.json()["message"]
    listed = api.get("/v1/sandboxes", params={"status": "hibernated"}).json()["data"]
    assert sandbox_id in [s["id"] for s in listed]

    resp = api.post(f"{base}/wake")
    assert resp.status_code == 200 and resp.json()["status"] == "running"
    assert _secret(api, sandbox_id) == secret
    assert _sh(api, sandbox_id, "cat ~/before.txt") == "written"


def test_kill_hibernated_leaves_nothing(
    api: httpx.Client, server: ServerProcess, make_sandbox: Callable[..., dict[str, Any]]
) -> None:
    sandbox_id = make_sandbox()["id"]
    assert api.post(f"/v1/sandboxes/{sandbox_id}/hibernate").status_code == 200
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert [x for x in leftovers(server.data_dir, run_cgroups()) if sandbox_id in x] == []


def test_fork_into_two_with_sdk(server: ServerProcess) -> None:
    sbx = Sandbox.create(base_url=server.url, api_key=server.api_key)
    copies: list[Sandbox] = []
    try:
        sbx.commands.run(holder.START)
        secret = int(sbx.commands.run(holder.ASK).stdout.split()[0])
        copies = sbx.fork(2)
        ids = {sbx.sandbox_id, *(c.sandbox_id for c in copies)}
        assert len(ids) == 3
        addresses = set()
        for box in (sbx, *copies):
            assert int(box.commands.run(holder.ASK).stdout.split()[0]) == secret
            ip = box.commands.run("ip -4 -o addr show eth0 | awk '{print $4}'").stdout.strip()
            addresses.add(ip)
        assert len(addresses) == 3, addresses
        assert sbx.get_info().status == "running"
        copies[0].files.write("/home/user/mine.txt", "only here")
        for box in (sbx, copies[1]):
            assert not box.files.exists("/home/user/mine.txt")
    finally:
        for box in (*copies, sbx):
            with contextlib.suppress(SandboxNotFound):
                box.kill()


def test_cli(client_env: dict[str, str], make_sandbox: Callable[..., dict[str, Any]]) -> None:
    sandbox_id = make_sandbox()["id"]

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sandbank", *args],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert '"hibernated"' in cli("hibernate", sandbox_id, "--json")
    assert '"running"' in cli("wake", sandbox_id, "--json")
    forked = cli("fork", sandbox_id, "--count", "1", "--json")
    (copy,) = json.loads(forked)
    assert copy["status"] == "running" and copy["id"] != sandbox_id
    cli("kill", copy["id"])


def test_wake_after_kill_9_and_restart() -> None:
    srv = new_server("ckpt-restart")
    srv.start()
    try:
        with srv.client() as api:
            sandbox_id = api.post("/v1/sandboxes", json={"timeout": 600}).json()["id"]
            _sh(api, sandbox_id, holder.START)
            secret = _secret(api, sandbox_id)
            resp = api.post(f"/v1/sandboxes/{sandbox_id}/hibernate")
            assert resp.status_code == 200, resp.text
        srv.stop(signal.SIGKILL)
        srv.start()
        with srv.client() as api:
            assert api.get(f"/v1/sandboxes/{sandbox_id}").json()["status"] == "hibernated"
            resp = api.post(f"/v1/sandboxes/{sandbox_id}/wake")
            assert resp.status_code == 200, resp.text
            assert _secret(api, sandbox_id) == secret
            assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()
