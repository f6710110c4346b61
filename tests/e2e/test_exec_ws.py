"""Exec over a WebSocket against real sandboxes: framing, stdin, signals, errors,
and the command going with a client that leaves."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

Make = Callable[..., dict[str, Any]]


def _open(server: Any, sid: str, key: str | None = None) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sid}/exec/ws"
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    return connect(url, additional_headers=headers, open_timeout=30)


def _recv(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return event


def _until_exit(ws: ClientConnection) -> list[dict[str, Any]]:
    events = []
    while True:
        events.append(_recv(ws))
        if events[-1]["type"] in ("exit", "error"):
            return events


def _close_code(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


def _text(events: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(e["data"] for e in events if e["type"] == kind)


def test_output_then_exit_then_close(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "echo out; echo err >&2; exit 3", "env": {"A": "1"}}))
        start = _recv(ws)
        assert start["type"] == "start" and start["pid"] > 0
        events = _until_exit(ws)
        assert (_text(events), _text(events, "stderr")) == ("out\n", "err\n")
        assert events[-1]["exit_code"] == 3 and events[-1]["timed_out"] is False
        assert _close_code(ws) == 1000  # the server closes normally after the exit


def test_open_stdin_text_bytes_and_close(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        ws.send(json.dumps({"cmd": ["cat"], "stdin": True, "timeout": 0}))
        assert _recv(ws)["type"] == "start"
        ws.send(json.dumps({"type": "stdin", "data": "text "}))
        ws.send(b"\x00bytes ")
        ws.send(json.dumps({"type": "stdin", "data_b64": "YjY0"}))
        ws.send(json.dumps({"type": "close_stdin"}))
        events = _until_exit(ws)
        raw = b"".join(
            base64.b64decode(e["data_b64"]) if "data_b64" in e else e["data"].encode()
            for e in events
            if e["type"] == "stdout"
        )
        assert raw == b"text \x00bytes b64"
        assert events[-1]["exit_code"] == 0


def test_signal_kill_and_control_errors(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "echo up; sleep 300", "timeout": 0}))
        assert _recv(ws)["type"] == "start"
        assert _recv(ws)["data"] == "up\n"
        # Bad control messages answer an error; the stream goes on.
        ws.send(json.dumps({"type": "stdin", "data": "x"}))
        error = _recv(ws)
        assert error["type"] == "error" and error["code"] == "conflict"
        ws.send(json.dumps({"type": "dance"}))
        assert _recv(ws)["code"] == "bad_request"
        ws.send(b"x" * (8 * 1024 * 1024 + 1))
        assert _recv(ws)["code"] == "payload_too_large"
        ws.send(json.dumps({"type": "signal", "signal": "BOGUS"}))
        assert _recv(ws)["code"] == "invalid_request"
        ws.send(json.dumps({"type": "signal", "signal": "TERM"}))
        end = _until_exit(ws)[-1]
        assert end["type"] == "exit" and end["signal"] == 15
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "sleep 300", "timeout": 0}))
        assert _recv(ws)["type"] == "start"
        ws.send(json.dumps({"type": "kill"}))
        assert _until_exit(ws)[-1]["signal"] == 9


def test_a_client_that_leaves_takes_the_command_along(
    server: Any, api: httpx.Client, make_sandbox: Make
) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "sleep 603", "timeout": 0}))
        pid = _recv(ws)["pid"]
        listed = api.get(f"/v1/sandboxes/{sid}/processes", params={"running": "true"}).json()
        assert [(p["pid"], p["kind"]) for p in listed["processes"]] == [(pid, "foreground")]
    info: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = api.get(f"/v1/sandboxes/{sid}/processes/{pid}").json()
        if not info["running"]:
            break
        time.sleep(0.1)
    assert info["running"] is False and info["signal"] == 9


def test_errors_before_the_start(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        ws.send("not json")
        error = _recv(ws)
        assert error["type"] == "error" and error["code"] == "invalid_request"
        assert _close_code(ws) == 4422
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "printf bin"}).encode())  # a binary first frame
        assert _until_exit(ws)[0]["type"] == "start"
    with _open(server, sid) as ws:
        ws.send(json.dumps({"command": "true", "cwd": "/does/not/exist"}))
        error = _recv(ws)
        assert error["type"] == "error" and "/does/not/exist" in error["message"]
    with _open(server, "nosuchsandbox") as ws:
        ws.send(json.dumps({"command": "true"}))
        assert _recv(ws)["code"] == "sandbox_not_found"
        assert _close_code(ws) == 4404
    with pytest.raises(InvalidStatus) as refused:
        _open(server, sid, key="sbk_wrong")
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["code"] == "unauthorized"


def test_output_arrives_as_it_happens(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    with _open(server, sid) as ws:
        began = time.monotonic()
        ws.send(json.dumps({"command": "echo one; sleep 1.5; echo two"}))
        seen = []
        while not seen or seen[-1][1]["type"] != "exit":
            seen.append((time.monotonic() - began, _recv(ws)))
    first = next(t for t, e in seen if e["type"] == "stdout")
    assert first < 1.2 and seen[-1][0] >= 1.5
    assert _text([e for _, e in seen]) == "one\ntwo\n"
