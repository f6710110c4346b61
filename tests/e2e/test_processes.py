"""Streamed exec and background processes against real sandboxes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbank import (
    AsyncSandbox,
    CommandExitError,
    CommandHandle,
    NotFound,
    ProcessInfo,
    Sandbox,
    Timeout,
)

Make = Callable[..., dict[str, Any]]


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line]


def _exec(api: httpx.Client, sid: str, **body: Any) -> dict[str, Any]:
    resp = api.post(f"/v1/sandboxes/{sid}/exec", json=body)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_stream_delivers_events_as_they_happen(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    body = {"command": "echo one; echo err >&2; sleep 1.5; echo two; exit 3"}
    started = time.monotonic()
    seen: list[tuple[float, dict[str, Any]]] = []
    with api.stream("POST", f"/v1/sandboxes/{sid}/exec/stream", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line:
                seen.append((time.monotonic() - started, json.loads(line)))
    kinds = [event["type"] for _, event in seen]
    assert kinds[0] == "start" and kinds[-1] == "exit"
    stdout = "".join(e["data"] for _, e in seen if e["type"] == "stdout")
    stderr = "".join(e["data"] for _, e in seen if e["type"] == "stderr")
    assert (stdout, stderr) == ("one\ntwo\n", "err\n")
    assert seen[-1][1]["exit_code"] == 3 and seen[-1][1]["timed_out"] is False
    # "one" arrived before the sleep ended, "two" after it.
    first_out = next(t for t, e in seen if e["type"] == "stdout")
    assert first_out < 1.2 and seen[-1][0] >= 1.5


def test_stream_timeout_and_binary(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    resp = api.post(f"/v1/sandboxes/{sid}/exec/stream", json={"command": "sleep 30", "timeout": 1})
    last = _events(resp)[-1]
    assert last["type"] == "exit" and last["timed_out"] is True
    resp = api.post(f"/v1/sandboxes/{sid}/exec/stream", json={"command": "printf '\\377\\000ok'"})
    out = [e for e in _events(resp) if e["type"] == "stdout"]
    raw = b"".join(
        base64.b64decode(e["data_b64"]) if "data_b64" in e else e["data"].encode() for e in out
    )
    assert raw == b"\xff\x00ok"


def test_stream_disconnect_kills_the_command(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    body = {"command": "echo ready; sleep 600", "timeout": 0}
    with api.stream("POST", f"/v1/sandboxes/{sid}/exec/stream", json=body) as resp:
        lines = resp.iter_lines()
        start = json.loads(next(lines))
        assert start["type"] == "start"
        assert json.loads(next(lines))["data"] == "ready\n"
    pid = start["pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = api.get(f"/v1/sandboxes/{sid}/processes/{pid}").json()
        if not info["running"]:
            break
        time.sleep(0.2)
    assert info["running"] is False and info["signal"] == 9
    assert _exec(api, sid, command="pgrep -f 'sleep 60[0]' || true")["stdout"] == ""


def test_background_start_logs_wait(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox(env={"FROM_CREATE": "yes"})["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    resp = api.post(
        base,
        json={
            "command": "echo $FROM_CREATE $EXTRA; sleep 1; echo late >&2; exit 7",
            "env": {"EXTRA": "x"},
            "tag": "job",
        },
    )
    assert resp.status_code == 201, resp.text
    info = resp.json()
    pid = info["pid"]
    assert info["running"] is True and info["tag"] == "job"
    # The pid is the sandbox's own: the process is visible inside.
    assert _exec(api, sid, cmd=["sh", "-c", f"kill -0 {pid} && echo alive"])["stdout"] == "alive\n"
    assert pid in [p["pid"] for p in api.get(base, params={"running": "true"}).json()["processes"]]

    waited = api.post(f"{base}/{pid}/wait", params={"timeout": 30}).json()
    assert waited["exit_code"] == 7 and waited["running"] is False
    events = _events(api.get(f"{base}/{pid}/output"))
    assert [e["type"] for e in events] == ["stdout", "stderr", "exit"]
    assert events[0]["data"] == "yes x\n" and events[1]["data"] == "late\n"
    assert events[-1]["exit_code"] == 7
    # Resume from an offset.
    again = _events(api.get(f"{base}/{pid}/output", params={"offset": 4}))
    assert again[0]["data"] == "x\n"


def test_follow_output_live(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    pid = api.post(base, json={"command": "for i in 1 2 3; do echo $i; sleep 0.3; done"}).json()[
        "pid"
    ]
    events = _events(api.get(f"{base}/{pid}/output", params={"follow": "true"}, timeout=30))
    assert "".join(e.get("data", "") for e in events) == "1\n2\n3\n"
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0


def test_stdin_open_send_close_with_cat(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    pid = api.post(base, json={"cmd": ["cat"], "stdin": "open"}).json()["pid"]
    assert api.post(f"{base}/{pid}/stdin", content=b"hello ").status_code == 204
    resp = api.post(f"{base}/{pid}/stdin", content=b"world", params={"close": "true"})
    assert resp.status_code == 204
    waited = api.post(f"{base}/{pid}/wait", params={"timeout": 10}).json()
    assert waited["exit_code"] == 0 and waited["stdin"] == "closed"
    text = "".join(e.get("data", "") for e in _events(api.get(f"{base}/{pid}/output")))
    assert text == "hello world"
    resp = api.post(f"{base}/{pid}/stdin", content=b"late")
    assert resp.status_code == 409 and resp.json()["exit_code"] == 0
    # stdin_data: input up front.
    pid = api.post(base, json={"cmd": ["cat"], "stdin_data": "given"}).json()["pid"]
    api.post(f"{base}/{pid}/wait", params={"timeout": 10})
    assert _events(api.get(f"{base}/{pid}/output"))[0]["data"] == "given"


def test_signal_and_kill(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    pid = api.post(base, json={"command": "sleep 300"}).json()["pid"]
    resp = api.post(f"{base}/{pid}/signal", json={"signal": "TERM"})
    assert resp.status_code == 200 and resp.json()["signal"] == 15
    waited = api.post(f"{base}/{pid}/wait", params={"timeout": 10}).json()
    assert waited["signal"] == 15 and waited["exit_code"] == 128 + 15

    pid = api.post(base, json={"command": "sleep 301 & sleep 302"}).json()["pid"]
    assert api.delete(f"{base}/{pid}").status_code == 204
    waited = api.post(f"{base}/{pid}/wait", params={"timeout": 10}).json()
    assert waited["signal"] == 9
    assert _exec(api, sid, command="pgrep -f 'sleep 30[12]' || true")["stdout"] == ""
    # Finished: 409 with its exit code.
    resp = api.delete(f"{base}/{pid}")
    assert resp.status_code == 409 and resp.json()["exit_code"] == 128 + 9
    resp = api.post(f"{base}/{pid}/signal", json={"signal": 15})
    assert resp.status_code == 409


def test_errors(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    for method, path in (
        ("GET", f"{base}/99999"),
        ("GET", f"{base}/99999/output"),
        ("POST", f"{base}/99999/wait"),
        ("DELETE", f"{base}/99999"),
    ):
        resp = api.request(method, path)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["code"] == "process_not_found" and "99999" in resp.json()["message"]
    pid = api.post(base, json={"command": "sleep 60"}).json()["pid"]
    for sig in ("BOGUS", 0, 4096):
        resp = api.post(f"{base}/{pid}/signal", json={"signal": sig})
        assert resp.status_code == 422 and resp.json()["code"] == "invalid_request"
    resp = api.post(f"{base}/{pid}/stdin", content=b"x")
    assert resp.status_code == 409  # its stdin was not opened
    resp = api.post(f"{base}/{pid}/wait", params={"timeout": 0.2})
    assert resp.status_code == 504 and resp.json()["code"] == "timeout"
    resp = api.post(base, json={"command": "true", "cwd": "/does/not/exist"})
    assert resp.status_code in (400, 404) and resp.json()["message"]
    assert api.delete(f"{base}/{pid}").status_code == 204


# -- the SDK ---------------------------------------------------------------------------


def _connect(server: Any, sandbox_id: str) -> Sandbox:
    return Sandbox.connect(sandbox_id, api_key=server.api_key, base_url=server.url)


def test_sdk_streaming_and_background(server: Any, make_sandbox: Make) -> None:
    sbx = _connect(server, make_sandbox()["id"])
    try:
        out: list[str] = []
        err: list[str] = []
        result = sbx.commands.run(
            "echo a; echo b >&2; exit 2", on_stdout=out.append, on_stderr=err.append
        )
        assert (result.exit_code, result.stdout, result.stderr) == (2, "a\n", "b\n")
        assert "".join(out) == "a\n" and "".join(err) == "b\n"
        with pytest.raises(CommandExitError):
            sbx.commands.run("exit 4", on_stdout=out.append, check=True)

        handle = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
        assert isinstance(handle, CommandHandle) and handle.pid > 0
        assert handle.pid in [p.pid for p in sbx.commands.list(running=True)]
        handle.send_stdin("to cat ")
        sbx.commands.send_stdin(handle.pid, b"bytes")
        handle.close_stdin()
        done = handle.wait(timeout=10)
        assert (done.exit_code, done.stdout) == (0, "to cat bytes")

        slow = sbx.commands.run("echo x; sleep 0.5; echo y", background=True)
        assert list(sbx.commands.connect(slow.pid)) == [("x\n", None), ("y\n", None)]
        assert slow.wait().stdout == "x\ny\n"
        assert slow.kill() is False

        sleeper = sbx.commands.run("sleep 300", background=True, timeout=0)
        sleeper.signal("INT")
        assert sleeper.wait(timeout=10).exit_code == 128 + 2
        sleeper = sbx.commands.run("sleep 300", background=True, timeout=0)
        assert sbx.commands.kill(sleeper.pid) is True
        assert sleeper.wait().exit_code == 128 + 9
        info = sleeper.info()
        assert isinstance(info, ProcessInfo) and info.signal == 9 and not info.running

        with pytest.raises(NotFound) as caught:
            sbx.commands.connect(99999)
        assert caught.value.code == "process_not_found"
        with pytest.raises(Timeout):
            sbx.commands.run("sleep 5", background=True).wait(timeout=0.3)
    finally:
        sbx.close()


async def test_async_sdk_background(server: Any, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    sbx = await AsyncSandbox.connect(sid, api_key=server.api_key, base_url=server.url)
    try:
        chunks: list[str] = []
        result = await sbx.commands.run("echo streamed", on_stdout=chunks.append)
        assert result.stdout == "streamed\n" and chunks == ["streamed\n"]
        handle = await sbx.commands.run("echo bg; exit 5", background=True)
        seen = [pair async for pair in handle]
        assert seen == [("bg\n", None)]
        assert (await handle.wait()).exit_code == 5
    finally:
        await sbx.close()


# -- streamed commands are processes; kill-on-disconnect at any moment ------------------


def _wait_ended(api: httpx.Client, sid: str, pid: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = api.get(f"/v1/sandboxes/{sid}/processes/{pid}").json()
        if not info["running"]:
            break
        time.sleep(0.1)
    return info


def test_a_streamed_command_is_listed_while_it_runs(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox(env={"SECRET": "hidden"})["id"]
    body = {"command": "echo go; sleep 30", "env": {"MINE": "shown"}, "cwd": "/tmp", "timeout": 0}
    with api.stream("POST", f"/v1/sandboxes/{sid}/exec/stream", json=body) as resp:
        lines = resp.iter_lines()
        pid = json.loads(next(lines))["pid"]
        listed = api.get(f"/v1/sandboxes/{sid}/processes", params={"running": "true"}).json()
        (info,) = [p for p in listed["processes"] if p["pid"] == pid]
        assert info["kind"] == "foreground" and info["cwd"] == "/tmp"
        assert info["env"] == {"MINE": "shown"} and "SECRET" in info["env_keys"]
        assert info["cmd"][-1].endswith("sleep 30")
        # Another client can follow it and signal it like any process.
        assert api.post(f"/v1/sandboxes/{sid}/processes/{pid}/signal", json={"signal": 15})
        events = [json.loads(line) for line in lines if line]
    assert events[-1]["type"] == "exit" and events[-1]["signal"] == 15


def test_a_client_gone_before_the_first_byte_takes_the_command_along(
    server: Any, api: httpx.Client, make_sandbox: Make
) -> None:
    import socket
    from urllib.parse import urlsplit

    sid = make_sandbox()["id"]
    body = json.dumps({"command": "sleep 604", "timeout": 0}).encode()
    where = urlsplit(server.url)
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(
            f"POST /v1/sandboxes/{sid}/exec/stream HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Gone at once: the command may not even have started yet.
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        found = [
            p
            for p in api.get(f"/v1/sandboxes/{sid}/processes").json()["processes"]
            if " ".join(p["cmd"]).endswith("sleep 604")
        ]
        time.sleep(0.1)
    assert found, "the command was never started"
    info = _wait_ended(api, sid, found[0]["pid"])
    assert info["running"] is False and info["signal"] == 9


def test_a_client_gone_mid_stream_leaves_background_processes_alone(
    api: httpx.Client, make_sandbox: Make
) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    bg = api.post(base, json={"command": "echo bg; sleep 30"}).json()["pid"]
    with api.stream("GET", f"{base}/{bg}/output", params={"follow": "true"}) as resp:
        assert json.loads(next(resp.iter_lines()))["data"] == "bg\n"
    time.sleep(0.5)
    assert api.get(f"{base}/{bg}").json()["running"] is True
    assert api.delete(f"{base}/{bg}").status_code == 204


def test_server_sent_events(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    resp = api.post(
        f"/v1/sandboxes/{sid}/exec/stream",
        json={"command": "echo sse"},
        headers={"Accept": "text/event-stream"},
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b]
    names = [b.split("\n")[0] for b in blocks]
    assert names == ["event: start", "event: stdout", "event: exit"]
    assert json.loads(blocks[1].split("\n")[1].removeprefix("data: "))["data"] == "sse\n"


def test_signal_and_stdin_to_unknown_or_finished_pids(
    api: httpx.Client, make_sandbox: Make
) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    for resp in (
        api.post(f"{base}/99999/signal", json={"signal": "TERM"}),
        api.post(f"{base}/99999/stdin", content=b"x"),
        api.post(f"{base}/99999/stdin", params={"close": "true"}),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == "process_not_found" and resp.json()["pid"] == 99999
    pid = api.post(base, json={"cmd": ["cat"], "stdin": "open"}).json()["pid"]
    api.post(f"{base}/{pid}/stdin", params={"close": "true"})
    api.post(f"{base}/{pid}/wait", params={"timeout": 10})
    for resp in (
        api.post(f"{base}/{pid}/signal", json={"signal": "TERM"}),
        api.post(f"{base}/{pid}/stdin", content=b"x"),
        api.delete(f"{base}/{pid}"),
    ):
        assert resp.status_code == 409, resp.text
        assert (resp.json()["pid"], resp.json()["exit_code"]) == (pid, 0)
        assert str(pid) in resp.json()["message"]


def test_output_cap_marker_and_live_output_past_it(api: httpx.Client, make_sandbox: Make) -> None:
    sid = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sid}/processes"
    pid = api.post(
        base, json={"command": "head -c 5000 /dev/zero | tr '\\0' a", "max_output": 1000}
    ).json()["pid"]
    info = api.post(f"{base}/{pid}/wait", params={"timeout": 10}).json()
    assert info["truncated"] == ["stdout"] and info["output_bytes"] == 1000
    events = _events(api.get(f"{base}/{pid}/output"))
    assert [e["type"] for e in events][-2:] == ["truncated", "exit"]
    assert sum(len(e["data"]) for e in events if e["type"] == "stdout") == 1000
    assert api.post(base, json={"command": "true", "max_output": 1 << 40}).status_code == 422
    # A streamed command delivers everything, past the cap kept for replay (16 MiB).
    size = 20_000_000
    body = {"command": f"head -c {size} /dev/zero | tr '\\0' b; echo -n end >&2"}
    got = 0
    kinds = set()
    with api.stream("POST", f"/v1/sandboxes/{sid}/exec/stream", json=body) as resp:
        for line in resp.iter_lines():
            event = json.loads(line)
            kinds.add(event["type"])
            if event["type"] == "stdout":
                got += len(event["data"])
            elif event["type"] == "stderr":
                assert event["data"] == "end"
    assert got == size and {"truncated", "stderr", "exit"} <= kinds
