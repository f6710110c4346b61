"""The terminal routes over the ASGI app with the fake runtime: credentials
(API key or the sandbox's terminal token), validation, and the WebSocket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sandbank.server.app import create_app
from sandbank.server.settings import Settings

KEY = "sbk_unit_pty_key"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client


def _sandbox(client: TestClient) -> tuple[str, str]:
    info = client.post("/v1/sandboxes", json={}).json()
    token = info["terminal_url"].split("?token=")[1]
    assert info["terminal_url"].endswith(f"/terminal/{info['id']}?token={token}")
    return info["id"], token


def test_create_resize_and_validation(client: TestClient) -> None:
    sid, _ = _sandbox(client)
    created = client.post(f"/v1/sandboxes/{sid}/pty", json={"cols": 100, "rows": 30})
    assert created.status_code == 201, created.text
    pty = created.json()
    assert (pty["cols"], pty["rows"], pty["running"], pty["stdin"]) == (100, 30, True, "pty")
    pid = pty["pid"]
    resized = client.post(f"/v1/sandboxes/{sid}/pty/{pid}/resize", json={"cols": 90, "rows": 20})
    assert resized.status_code == 200 and (resized.json()["cols"], resized.json()["rows"]) == (
        90,
        20,
    )
    for body in ({"cols": 0, "rows": 20}, {"cols": 80, "rows": 0}, {"cols": 80}):
        bad = client.post(f"/v1/sandboxes/{sid}/pty/{pid}/resize", json=body)
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    bad = client.post(f"/v1/sandboxes/{sid}/pty", json={"cmd": [], "rows": 5})
    assert bad.status_code == 422 and "cmd must not be empty" in bad.text
    assert client.post(f"/v1/sandboxes/{sid}/pty", json={"shell": "zsh"}).status_code == 422
    missing = client.post(f"/v1/sandboxes/{sid}/pty/4242/input", content=b"x")
    assert missing.status_code == 404 and missing.json()["pid"] == 4242
    assert [p["pid"] for p in client.get(f"/v1/sandboxes/{sid}/pty").json()["ptys"]] == [pid]
    assert client.delete(f"/v1/sandboxes/{sid}/pty/{pid}").status_code == 204
    ended = client.post(f"/v1/sandboxes/{sid}/pty/{pid}/input", content=b"x")
    assert ended.status_code == 409 and ended.json()["exit_code"] == 137


def test_the_token_opens_this_sandbox_only(client: TestClient) -> None:
    sid, token = _sandbox(client)
    other, other_token = _sandbox(client)
    assert token != other_token and len(token) >= 32
    anon = {"Authorization": ""}
    assert client.get(f"/v1/sandboxes/{sid}/pty", headers=anon).status_code == 401
    ok = client.get(f"/v1/sandboxes/{sid}/pty", headers={**anon, "X-Sandbank-Token": token})
    assert ok.status_code == 200
    assert client.get(f"/v1/sandboxes/{sid}/pty?token={token}", headers=anon).status_code == 200
    for sandbox_id, given in ((other, token), (sid, other_token), ("nope", token)):
        refused = client.get(f"/v1/sandboxes/{sandbox_id}/pty?token={given}", headers=anon)
        assert refused.status_code == 404 and refused.json()["code"] == "sandbox_not_found"
    # Another tenant's API key sees no sandbox there.
    key = client.post("/v1/keys", json={"tenant": "other-tenant"}).json()["key"]
    foreign = client.get(f"/v1/sandboxes/{sid}/pty", headers={"Authorization": f"Bearer {key}"})
    assert foreign.status_code == 404 and foreign.json()["code"] == "sandbox_not_found"
    # The token opens terminals, nothing else of the sandbox.
    assert client.get(f"/v1/sandboxes/{sid}?token={token}", headers=anon).status_code == 401
    page = client.get(f"/terminal/{sid}?token={token}", headers=anon)
    assert page.status_code == 200 and "xterm" in page.text
    assert client.get(f"/terminal/{sid}?token={other_token}", headers=anon).status_code == 404


def test_websocket_session(client: TestClient) -> None:
    sid, token = _sandbox(client)
    pid = client.post(f"/v1/sandboxes/{sid}/pty", json={}).json()["pid"]
    with client.websocket_connect(f"/v1/sandboxes/{sid}/pty/{pid}/ws?token={token}") as ws:
        assert ws.receive_json() == {"type": "ready", "pid": pid, "cols": 80, "rows": 24,
                                     "offset": 0}  # fmt: skip
        ws.send_bytes(b"typed")
        assert ws.receive_bytes() == b"typed"  # the fake terminal echoes
        ws.send_text(json.dumps({"type": "resize", "cols": 0, "rows": 3}))
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == "invalid_request"
        ws.send_text("{oops")
        assert ws.receive_json()["code"] == "invalid_request"
        ws.send_text(json.dumps({"type": "resize", "cols": 50, "rows": 10}))
        assert ws.receive_json() == {"type": "resized", "cols": 50, "rows": 10}
    assert client.get(f"/v1/sandboxes/{sid}/pty/{pid}").json()["cols"] == 50
    client.delete(f"/v1/sandboxes/{sid}/pty/{pid}")


def test_websocket_refusals(client: TestClient) -> None:
    sid, token = _sandbox(client)
    for url in (f"/v1/sandboxes/{sid}/pty/77/ws?token={token}",
                f"/v1/sandboxes/{sid}/pty/77/ws?token=wrong"):  # fmt: skip
        with pytest.raises(WebSocketDisconnect), client.websocket_connect(url) as ws:
            ws.receive_json()
