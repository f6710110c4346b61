"""Pause and resume against the real server: the cgroup freezer end to end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbank import Sandbox, SandboxNotFound, SandboxPaused
from tests.support.server import ServerProcess


def test_pause_exec_409_resume(
    api: httpx.Client, make_sandbox: Callable[..., dict[str, Any]]
) -> None:
    sandbox_id = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    ran = api.post(f"{base}/exec", json={"command": "echo $$ > /tmp/pid; echo up"})
    assert ran.status_code == 200 and ran.json()["stdout"] == "up\n"

    paused = api.post(f"{base}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert api.post(f"{base}/pause").json()["status"] == "paused"
    assert api.get(base).json()["status"] == "paused"

    refused = api.post(f"{base}/exec", json={"command": "echo hi"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "sandbox_paused"
    assert f"{base}/resume" in refused.json()["message"]
    assert api.get(f"{base}/files", params={"path": "/tmp/pid"}).status_code == 409

    resumed = api.post(f"{base}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert api.post(f"{base}/resume").json()["status"] == "running"
    ran = api.post(f"{base}/exec", json={"command": "echo again"})
    assert ran.status_code == 200 and ran.json()["stdout"] == "again\n"


def test_kill_paused(api: httpx.Client, make_sandbox: Callable[..., dict[str, Any]]) -> None:
    sandbox_id = make_sandbox()["id"]
    assert api.post(f"/v1/sandboxes/{sandbox_id}/pause").status_code == 200
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert api.get(f"/v1/sandboxes/{sandbox_id}").status_code == 404


def test_sdk_pause_resume(server: ServerProcess) -> None:
    sbx = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        assert sbx.commands.run("echo hi").stdout == "hi\n"
        assert sbx.pause().status == "paused"
        assert sbx.get_info().status == "paused"
        with pytest.raises(SandboxPaused):
            sbx.commands.run("echo hi")
        assert sbx.resume().status == "running"
        assert sbx.commands.run("echo back").stdout == "back\n"
    finally:
        with contextlib.suppress(SandboxNotFound):
            sbx.kill()
