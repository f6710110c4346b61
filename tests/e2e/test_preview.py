"""Preview URLs on the real server: a port inside a sandbox, reached through it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

#: A tiny HTTP + WebSocket server for inside the sandbox (stdlib only): it
#: reports what it got, streams on /stream and echoes WebSocket messages.
APP = r"""
import asyncio, base64, hashlib

async def websocket(r, w, hdrs):
    key = hdrs["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
    w.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    while True:
        b1, b2 = await r.readexactly(2)
        op, n = b1 & 15, b2 & 127
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        mask = await r.readexactly(4)
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await r.readexactly(n)))
        if op == 8:
            w.write(b"\x88\x00")
            break
        reply = b"echo:" + data
        w.write(bytes([0x80 | op, len(reply)]) + reply)
        await w.drain()

async def handle(r, w):
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    method, path, _ = lines[0].split(" ")
    hdrs = {k.strip().lower(): v.strip() for k, v in
            (line.split(":", 1) for line in lines[1:] if ":" in line)}
    if hdrs.get("upgrade", "").lower() == "websocket":
        await websocket(r, w, hdrs)
    elif path.startswith("/stream"):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            chunk = f"tick {i}\n".encode()
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await w.drain()
            await asyncio.sleep(0.4)
        w.write(b"0\r\n\r\n")
    else:
        n = int(hdrs.get("content-length", 0))
        body = (await r.readexactly(n)).decode() if n else ""
        out = (f"{method} {path} auth={hdrs.get('authorization', '-')} "
               f"token={hdrs.get('x-sandbank-token', '-')} body={body}"
               f" cookie={hdrs.get('cookie', '-')}").encode()
        w.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
    await w.drain()
    w.close()

async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", 8000)
    await server.serve_forever()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def app_box(server: ServerProcess) -> Iterator[dict[str, Any]]:
    with server.client() as api:
        box = api.post("/v1/sandboxes", json={}).json()
        sid = box["id"]
        api.put(f"/v1/sandboxes/{sid}/files?path=/home/user/app.py", content=APP.encode())
        start = (
            "setsid python3 app.py >/dev/null 2>&1 </dev/null & "
            "for i in $(seq 50); do python3 -c 'import socket; "
            'socket.create_connection(("127.0.0.1", 8000), 0.2)\' 2>/dev/null && exit 0; '
            "sleep 0.1; done; exit 1"
        )
        resp = api.post(f"/v1/sandboxes/{sid}/exec", json={"command": start})
        assert resp.json()["exit_code"] == 0, resp.text
        info = api.get(f"/v1/sandboxes/{sid}/preview").json()
        yield {"id": sid, **info}
        api.delete(f"/v1/sandboxes/{sid}")


def port_path(box: dict[str, Any], port: int | str, rest: str = "") -> str:
    return f"/v1/sandboxes/{box['id']}/ports/{port}/{rest}"


def test_token_header_or_query_reaches_the_port_and_is_not_passed_on(
    server: ServerProcess, app_box: dict[str, Any]
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        resp = anon.get(
            port_path(app_box, 8000, "hi?x=1"), headers={"X-Sandbank-Token": app_box["token"]}
        )
        assert resp.status_code == 200, resp.text
        assert resp.text == "GET /hi?x=1 auth=- token=- body= cookie=-"
        anon.cookies.clear()
        assert resp.headers.get_list("set-cookie") == ["a=1", "b=2"]
        resp = anon.post(
            port_path(app_box, 8000, f"echo?sandbank_token={app_box['token']}"), content=b"payload"
        )
        assert resp.text == "POST /echo auth=- token=- body=payload cookie=-"
        # A query token is kept in a cookie scoped to this port's path.
        assert f"Path=/v1/sandboxes/{app_box['id']}/ports/8000/;" in resp.headers["set-cookie"]
        url = app_box["url"].replace("{port}", "8000")
        assert anon.get(url).status_code == 200


def test_owner_api_key_works_and_is_not_passed_on(
    server: ServerProcess, app_box: dict[str, Any]
) -> None:
    with server.client() as api:
        resp = api.get(port_path(app_box, 8000, "k"))
        assert resp.text.startswith("GET /k auth=- token=- body= ")


def test_host_header_form(server: ServerProcess, app_box: dict[str, Any]) -> None:
    host = f"8000-{app_box['id']}.localhost:{server.port}"
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        resp = anon.get("/page?sandbank_token=" + app_box["token"], headers={"Host": host})
        assert resp.status_code == 200, resp.text
        assert resp.text.startswith("GET /page ")
        # The page's own next requests (its assets) carry the token in a cookie,
        # which stays with the server.
        cookie = resp.headers.get_list("set-cookie")[-1]
        assert cookie.startswith("sandbank_preview=") and "Path=/;" in cookie
        token_cookie = cookie.split(";")[0]
        anon.cookies.clear()
        resp = anon.get("/app.js", headers={"Host": host, "Cookie": f"{token_cookie}; theirs=1"})
        assert resp.status_code == 200, resp.text
        assert resp.text.startswith("GET /app.js ") and resp.text.endswith("cookie=theirs=1")
    assert app_box["host_url"].startswith(f"http://{{port}}-{app_box['id']}.localhost:")


def test_responses_stream(server: ServerProcess, app_box: dict[str, Any]) -> None:
    headers = {"X-Sandbank-Token": app_box["token"]}
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        started = time.monotonic()
        with anon.stream("GET", port_path(app_box, 8000, "stream"), headers=headers) as resp:
            arrivals = [(time.monotonic() - started, line) for line in resp.iter_lines() if line]
    assert [line for _, line in arrivals] == ["tick 0", "tick 1", "tick 2"]
    assert arrivals[0][0] < arrivals[2][0] - 0.5, arrivals


def test_websocket(server: ServerProcess, app_box: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect

    async def talk() -> list[str]:
        url = server.url.replace("http://", "ws://") + port_path(app_box, 8000, "ws")
        async with connect(f"{url}?sandbank_token={app_box['token']}") as ws:
            got = []
            for text in ("one", "two"):
                await ws.send(text)
                got.append(str(await ws.recv()))
            return got

    assert asyncio.run(talk()) == ["echo:one", "echo:two"]


def test_refusals(server: ServerProcess, app_box: dict[str, Any]) -> None:
    token = {"X-Sandbank-Token": app_box["token"]}
    with httpx.Client(base_url=server.url, timeout=30) as anon, server.client() as api:
        resp = anon.get(port_path(app_box, 8001), headers=token)
        assert resp.status_code == 502
        assert resp.json()["code"] == "port_unreachable" and resp.json()["port"] == 8001
        assert "port 8001" in resp.json()["message"]
        assert anon.get(port_path(app_box, 8000)).status_code == 401
        first = "y" if app_box["token"].startswith("x") else "x"  # a token that differs
        bad = {"X-Sandbank-Token": first + app_box["token"][1:]}
        assert anon.get(port_path(app_box, 8000), headers=bad).status_code == 404
        for port in (0, 70000):
            assert anon.get(port_path(app_box, port), headers=token).status_code == 422
        other = api.post("/v1/keys", json={"tenant": "preview-other"}).json()["key"]
        with server.client(other) as them:
            assert them.get(port_path(app_box, 8000)).status_code == 404
            assert them.get(f"/v1/sandboxes/{app_box['id']}/preview").status_code == 404
        unknown = {"id": "nosuchsandbox0000"}
        assert anon.get(port_path(unknown, 8000), headers=token).status_code == 404


def test_killed_sandbox_is_not_found(server: ServerProcess) -> None:
    with server.client() as api:
        sid = api.post("/v1/sandboxes", json={}).json()["id"]
        token = api.get(f"/v1/sandboxes/{sid}/preview").json()["token"]
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
        resp = api.get(f"/v1/sandboxes/{sid}/ports/8000/", headers={"X-Sandbank-Token": token})
        assert resp.status_code == 404
