"""Terminals against real sandboxes: the SDK over the WebSocket, the REST routes,
bad input, reconnecting with replay, and the browser terminal's token path."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from sandbank import PtyHandle, PtySize, Sandbox
from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]


def read_until(handle: PtyHandle, pattern: str, timeout: float = 20) -> str:
    """Output of the handle until ``pattern`` (a regex) shows up in it."""
    seen = b""
    deadline = time.monotonic() + timeout
    for chunk in handle:
        seen += chunk
        text = seen.decode(errors="replace")
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} in {text!r}"
    raise AssertionError(f"the terminal ended without {pattern!r}: {seen!r}")


@pytest.fixture
def sbx(server: ServerProcess, make_sandbox: Make) -> Any:
    sandbox = Sandbox.connect(make_sandbox()["id"], api_key=server.api_key, base_url=server.url)
    yield sandbox
    sandbox.close()


def test_create_io_resize_and_exit_code(sbx: Sandbox) -> None:
    chunks: list[bytes] = []
    handle = sbx.pty.create(PtySize(rows=24, cols=80), on_data=chunks.append)
    try:
        handle.send_input("tty; stty size; echo $TERM-$USER-$((6*7))\n")
        out = read_until(handle, r"xterm-256color-user-42")
        assert "/dev/pts/" in out and "24 80" in out
        handle.resize(PtySize(rows=30, cols=100))
        handle.send_input("stty size\n")
        read_until(handle, r"30 100")
        # Ctrl-C reaches the foreground job, not the shell.
        handle.send_input("sleep 100\n")
        time.sleep(0.5)
        handle.send_input(b"\x03")
        handle.send_input("echo after-$?\n")
        read_until(handle, r"after-130")
        handle.send_input("exit 3\n")
        result = handle.wait()
        assert result.exit_code == 3 and handle.exit_code == 3
        assert b"".join(chunks).count(b"after-130") >= 1
    finally:
        handle.disconnect()
    info = sbx.pty.get(handle.pid)
    assert not info.running and info.exit_code == 3 and (info.cols, info.rows) == (100, 30)


def test_several_terminals_list_kill_and_rest_input(sbx: Sandbox) -> None:
    one = sbx.pty.create(cwd="/tmp", envs={"MARK": "first"})
    two = sbx.pty.create(PtySize(rows=10, cols=40), cmd=["bash", "--norc", "-i"], user="root")
    try:
        assert one.pid != two.pid
        assert {p.pid for p in sbx.pty.list() if p.running} >= {one.pid, two.pid}
        one.send_input("echo $MARK-$(pwd)\n")
        read_until(one, r"first-/tmp")
        # Input and resize through REST reach the same terminal as the socket's.
        sbx.pty.resize(two.pid, PtySize(rows=12, cols=50))
        sbx.pty.send_input(two.pid, "stty size; id -un\n")
        read_until(two, r"12 50\s+root")
        assert sbx.pty.kill(two.pid) is True
        assert two.wait().exit_code == 137
        assert sbx.pty.kill(two.pid) is False
        one.send_input("echo still-$((1+1))\n")
        read_until(one, r"still-2")
    finally:
        one.disconnect()
        two.disconnect()
        sbx.pty.kill(one.pid)


def test_reconnect_replays_then_goes_live(sbx: Sandbox) -> None:
    first = sbx.pty.create()
    first.send_input("echo before-$((40+2))\n")
    read_until(first, r"before-42")
    first.disconnect()
    again = sbx.pty.connect(first.pid)
    try:
        assert again.offset == 0
        read_until(again, r"before-42")  # replayed
        again.send_input("echo after-$((50+5))\n")
        read_until(again, r"after-55")  # live
        position = again.position
    finally:
        again.disconnect()
    # From an offset: only what came after it.
    tail = sbx.pty.connect(first.pid, offset=position)
    try:
        tail.send_input("echo tail-$((1+2))\n")
        text = read_until(tail, r"tail-3")
        assert "before-42" not in text and "after-55" not in text
    finally:
        tail.disconnect()
        assert sbx.pty.kill(first.pid)


def test_bad_input(api: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    base = f"/v1/sandboxes/{sid}/pty"
    for body in ({"cols": 0}, {"rows": 0}, {"cols": 70000}):
        resp = api.post(base, json=body)
        assert resp.status_code == 422, resp.text
    resp = api.post(base, json={"cwd": "/no/such/dir"})
    assert resp.status_code == 404 and resp.json()["code"] == "file_not_found", resp.text
    assert "/no/such/dir" in resp.json()["message"]
    resp = api.post(f"{base}/99999/input", content=b"x")
    assert resp.status_code == 404 and resp.json()["pid"] == 99999, resp.text
    resp = api.post(f"{base}/99999/resize", json={"cols": 10, "rows": 10})
    assert resp.status_code == 404, resp.text
    pid = api.post(base, json={"command": "exit 7"}).json()["pid"]
    assert api.post(f"{base}/{pid}/wait", params={"timeout": 20}).json()["exit_code"] == 7
    resp = api.post(f"{base}/{pid}/input", content=b"x")
    assert resp.status_code == 409, resp.text
    assert resp.json()["pid"] == pid and resp.json()["exit_code"] == 7
    resp = api.post(f"{base}/{pid}/resize", json={"cols": 10, "rows": 10})
    assert resp.status_code == 409 and resp.json()["exit_code"] == 7, resp.text
    live = api.post(base, json={}).json()["pid"]
    resp = api.post(f"{base}/{live}/resize", json={"cols": 0, "rows": 10})
    assert resp.status_code == 422, resp.text
    # A process started as a background command is not a terminal.
    bg = api.post(f"/v1/sandboxes/{sid}/processes", json={"command": "sleep 30"}).json()["pid"]
    assert api.post(f"{base}/{bg}/resize", json={"cols": 10, "rows": 10}).status_code == 404
    assert api.delete(f"/v1/sandboxes/{sid}/processes/{bg}").status_code == 204
    assert api.delete(f"{base}/{live}").status_code == 204
    assert api.delete(f"{base}/{live}").status_code in (404, 409)


def test_browser_terminal_page_assets_and_token(
    server: ServerProcess, api: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    url = api.get(f"/v1/sandboxes/{sid}").json()["terminal_url"]
    parts = urlsplit(url)
    assert parts.path == f"/terminal/{sid}" and parts.query.startswith("token=")
    token = parts.query.removeprefix("token=")
    with httpx.Client(base_url=server.url) as anon:
        page = anon.get(f"{parts.path}?{parts.query}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "assets/xterm.js" in page.text and "assets/addon-fit.js" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        for name, kind, needle in (
            ("xterm.js", "text/javascript", "Terminal"),
            ("addon-fit.js", "text/javascript", "FitAddon"),
            ("xterm.css", "text/css", ".xterm"),
            ("terminal.js", "text/javascript", "/ws"),
        ):
            asset = anon.get(f"/terminal/assets/{name}")
            assert asset.status_code == 200, (name, asset.text[:200])
            assert asset.headers["content-type"].startswith(kind) and needle in asset.text
        assert anon.get("/terminal/assets/..%2Fterminal.html").status_code == 404
        # No token, a wrong one, one of another sandbox: nothing, and no hint.
        assert anon.get(parts.path).status_code == 401
        wrong = anon.get(parts.path, params={"token": token[:-2] + "xx"})
        assert wrong.status_code == 404 and wrong.json()["code"] == "sandbox_not_found"
        other = anon.get("/terminal/sbx-does-not-exist", params={"token": token})
        assert other.status_code == 404 and other.json()["code"] == "sandbox_not_found"
        assert anon.post(f"/v1/sandboxes/{sid}/pty", json={}).status_code == 401
        assert anon.get(f"/v1/sandboxes/{sid}/processes").status_code == 401
        # What the page does: create with the token header, then the WebSocket.
        created = anon.post(
            f"/v1/sandboxes/{sid}/pty",
            json={"cols": 90, "rows": 20},
            headers={"X-Sandbank-Token": token},
        )
        assert created.status_code == 201, created.text
        pid = created.json()["pid"]
    ws_base = server.url.replace("http://", "ws://")
    asyncio.run(_browser_session(f"{ws_base}/v1/sandboxes/{sid}/pty/{pid}/ws", token))
    assert api.get(f"/v1/sandboxes/{sid}/pty/{pid}").json()["exit_code"] == 0


async def _browser_session(url: str, token: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(f"{url}?token=nope")
    assert refused.value.response.status_code == 404
    async with ws_connect(f"{url}?token={token}") as ws:
        ready = json.loads(await ws.recv())
        assert ready == {"type": "ready", "pid": ready["pid"], "cols": 90, "rows": 20, "offset": 0}
        await ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 5}))
        await ws.send(json.dumps({"type": "resize", "cols": 101, "rows": 33}))
        await ws.send(json.dumps({"type": "input", "data": "stty size; "}))
        await ws.send(b"echo hi-$((1+2)); exit\r")
        seen, events = b"", []
        async with asyncio.timeout(20):
            async for message in ws:
                if isinstance(message, bytes):
                    seen += message
                else:
                    events.append(json.loads(message))
    assert b"33 101" in seen and b"hi-3" in seen
    kinds = [event["type"] for event in events]
    assert kinds[0] == "error" and events[0]["code"] == "invalid_request"
    assert "resized" in kinds and kinds[-1] == "exit" and events[-1]["exit_code"] == 0


_PAGE_HARNESS = r"""
// Runs the page's own terminal.js against the server, with xterm.js and the
// DOM stubbed and Node's fetch and WebSocket for real.
const fs = require("fs");
const [script, pageUrl] = process.argv.slice(2);
let written = "";
const handlers = {};
globalThis.Terminal = class {
  constructor() { this.cols = 80; this.rows = 24; }
  loadAddon() {} open() {} focus() {}
  write(data) { written += typeof data === "string" ? data : Buffer.from(data).toString(); }
  onData(f) { handlers.data = f; } onBinary() {} onResize() {}
};
globalThis.FitAddon = { FitAddon: class { fit() {} } };
globalThis.document = { getElementById: () => ({}) };
globalThis.window = { addEventListener() {} };
globalThis.location = new URL(pageUrl);
const store = new Map();
globalThis.sessionStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};
eval(fs.readFileSync(script, "utf8"));
const until = async (test, ms) => {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) { console.log(JSON.stringify(written)); process.exit(1); }
    await new Promise((r) => setTimeout(r, 50));
  }
};
(async () => {
  await until(() => /[$#] $/.test(written), 20000);
  handlers.data("echo js-$((2+3))\r");
  await until(() => written.includes("js-5"), 20000);
  console.log("OK " + store.size);
  process.exit(0);
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_script_opens_a_shell(
    server: ServerProcess, api: httpx.Client, sandbox: dict[str, Any], tmp_path: Path
) -> None:
    """terminal.js itself: creates a terminal with the URL's token, opens the
    WebSocket, shows the prompt and runs what is typed."""
    url = api.get(f"/v1/sandboxes/{sandbox['id']}").json()["terminal_url"]
    harness = tmp_path / "harness.js"
    harness.write_text(_PAGE_HARNESS)
    script = Path(__file__).resolve().parents[2] / "src/sandbank/dashboard/terminal.js"
    done = subprocess.run(
        ["node", "--experimental-websocket", "--no-warnings", str(harness), str(script), url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("OK 1"), done.stdout + done.stderr
    ptys = api.get(f"/v1/sandboxes/{sandbox['id']}/pty").json()["ptys"]
    assert len(ptys) == 1 and (ptys[0]["cols"], ptys[0]["rows"]) == (80, 24)
