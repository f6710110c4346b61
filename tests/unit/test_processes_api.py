"""The processes API and streamed exec over the ASGI app with the fake runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbank import AsyncSandbox, NotFound, ValidationFailed
from sandbank.server.app import create_app
from sandbank.server.service.processes import signal_number
from sandbank.server.settings import Settings

KEY = "sbk_unit_processes_key"


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


@pytest.fixture
async def api(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {KEY}"}
    ) as client:
        yield client


async def _sandbox(api: httpx.AsyncClient) -> str:
    resp = await api.post("/v1/sandboxes", json={})
    assert resp.status_code == 201, resp.text
    sandbox_id: str = resp.json()["id"]
    return sandbox_id


def _lines(body: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line]


async def test_exec_stream_events_in_order(api: httpx.AsyncClient) -> None:
    sid = await _sandbox(api)
    resp = await api.post(f"/v1/sandboxes/{sid}/exec/stream", json={"command": "echo hi"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    events = _lines(resp.text)
    assert [e["type"] for e in events] == ["start", "stdout", "exit"]
    assert events[0]["pid"] > 0
    assert events[1]["data"] == "hi\n" and "data_b64" not in events[1]
    assert events[2]["exit_code"] == 0 and events[2]["timed_out"] is False
    assert events[2]["duration_ms"] >= 0


async def test_exec_stream_rejects_bad_input(api: httpx.AsyncClient) -> None:
    sid = await _sandbox(api)
    for body in ({}, {"cmd": []}, {"command": "true", "timeout": -1}, {"command": "x", "y": 1}):
        resp = await api.post(f"/v1/sandboxes/{sid}/exec/stream", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["code"] == "invalid_request"
    resp = await api.post("/v1/sandboxes/nosuchbox/exec/stream", json={"command": "true"})
    assert resp.status_code == 404 and resp.json()["code"] == "sandbox_not_found"


async def test_background_lifecycle(api: httpx.AsyncClient) -> None:
    sid = await _sandbox(api)
    base = f"/v1/sandboxes/{sid}/processes"
    resp = await api.post(base, json={"cmd": ["sleep", "100"], "tag": "sleeper"})
    assert resp.status_code == 201, resp.text
    info = resp.json()
    pid = info["pid"]
    assert info["running"] is True and info["tag"] == "sleeper"
    done = (await api.post(base, json={"command": "echo done"})).json()
    assert done["running"] is False and done["exit_code"] == 0

    listed = (await api.get(base)).json()["processes"]
    assert {p["pid"] for p in listed} == {pid, done["pid"]}
    running = (await api.get(base, params={"running": "true"})).json()["processes"]
    assert [p["pid"] for p in running] == [pid]
    assert (await api.get(f"{base}/{pid}")).json()["pid"] == pid

    out = _lines((await api.get(f"{base}/{done['pid']}/output")).text)
    assert [e["type"] for e in out] == ["stdout", "exit"] and out[0]["data"] == "done\n"
    out = _lines((await api.get(f"{base}/{done['pid']}/output", params={"offset": 2})).text)
    assert out[0]["data"] == "ne\n"

    resp = await api.post(f"{base}/{pid}/signal", json={"signal": "TERM"})
    assert resp.status_code == 200 and resp.json()["signal"] == 15
    waited = (await api.post(f"{base}/{pid}/wait", params={"timeout": 5})).json()
    assert waited["exit_code"] == 128 + 15 and waited["signal"] == 15

    resp = await api.delete(f"{base}/{pid}")
    assert resp.status_code == 409 and resp.json()["exit_code"] == 128 + 15


async def test_stdin_open_send_close(api: httpx.AsyncClient) -> None:
    sid = await _sandbox(api)
    base = f"/v1/sandboxes/{sid}/processes"
    pid = (await api.post(base, json={"cmd": ["cat"], "stdin": "open"})).json()["pid"]
    assert (await api.post(f"{base}/{pid}/stdin", content=b"abc")).status_code == 204
    resp = await api.post(f"{base}/{pid}/stdin", content=b"def", params={"close": "true"})
    assert resp.status_code == 204
    waited = (await api.post(f"{base}/{pid}/wait")).json()
    assert waited["exit_code"] == 0
    out = _lines((await api.get(f"{base}/{pid}/output", params={"follow": "true"})).text)
    assert "".join(e.get("data", "") for e in out) == "abcdef"
    resp = await api.post(f"{base}/{pid}/stdin", content=b"late")
    assert resp.status_code == 409


async def test_errors_are_clear(api: httpx.AsyncClient) -> None:
    sid = await _sandbox(api)
    base = f"/v1/sandboxes/{sid}/processes"
    for method, path, kwargs in (
        ("GET", f"{base}/4242", {}),
        ("GET", f"{base}/4242/output", {}),
        ("POST", f"{base}/4242/wait", {}),
        ("POST", f"{base}/4242/stdin", {"content": b"x"}),
        ("POST", f"{base}/4242/signal", {"json": {"signal": 15}}),
        ("DELETE", f"{base}/4242", {}),
    ):
        resp = await api.request(method, path, **kwargs)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["code"] == "process_not_found" and "4242" in resp.json()["message"]
    pid = (await api.post(base, json={"cmd": ["sleep", "9"]})).json()["pid"]
    for sig in ("NOPE", 0, 999, True):
        resp = await api.post(f"{base}/{pid}/signal", json={"signal": sig})
        assert resp.status_code == 422, (sig, resp.text)
    for body in (
        {},
        {"cmd": ["a"], "command": "a"},
        {"command": "a", "stdin": "maybe"},
        {"command": "a", "stdin": "open", "stdin_data": "x"},
        {"command": "a", "timeout": -2},
    ):
        resp = await api.post(base, json=body)
        assert resp.status_code == 422, (body, resp.text)
    resp = await api.get(f"{base}/{pid}/output", params={"offset": -1})
    assert resp.status_code == 422
    for bad in ("-1", "nan", "inf"):
        resp = await api.post(f"{base}/{pid}/wait", params={"timeout": bad})
        assert resp.status_code == 422, (bad, resp.text)
    resp = await api.get(f"{base}/notapid")
    assert resp.status_code == 422
    await api.delete(f"{base}/{pid}")


def test_signal_names_and_numbers() -> None:
    assert signal_number("TERM") == signal_number("sigterm") == signal_number(15) == 15
    assert signal_number("9") == 9


async def test_async_sdk_over_the_app(transport: httpx.ASGITransport) -> None:
    sbx = await AsyncSandbox.create(api_key=KEY, base_url="http://test", transport=transport)
    try:
        chunks: list[str] = []
        result = await sbx.commands.run("echo hi", on_stdout=chunks.append)
        assert (result.exit_code, result.stdout, chunks) == (0, "hi\n", ["hi\n"])
        handle = await sbx.commands.run(["cat"], background=True, stdin=True)
        await handle.send_stdin("fed")
        await handle.close_stdin()
        assert (await handle.wait()).stdout == "fed"
        sleeper = await sbx.commands.run(["sleep", "5"], background=True)
        assert [p.pid for p in await sbx.commands.list(running=True)] == [sleeper.pid]
        assert await sbx.commands.kill(sleeper.pid) is True
        assert await sbx.commands.kill(sleeper.pid) is False
        assert (await sleeper.wait()).exit_code == 128 + 9
        with pytest.raises(NotFound):
            await sbx.commands.connect(31337)
        with pytest.raises(ValidationFailed):
            await sbx.commands.run("cat", stdin=True)
        # Handlers given with background=True are called by the handle's wait().
        later: list[str] = []
        echo = await sbx.commands.run("echo later", background=True, on_stdout=later.append)
        assert (await echo.wait()).stdout == "later\n" and later == ["later\n"]
    finally:
        await sbx.kill()


class _Chunks:
    """An ``ApiConnection`` whose streamed answer arrives in given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                yield chunk
        finally:
            self.closed = True


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
async def test_sdk_reads_ndjson_lines_across_any_chunking(size: int) -> None:
    from sandbank.client._async.process import ndjson

    events = [{"type": "stdout", "data": "x" * n + "\n", "offset": n} for n in (0, 5, 3000)]
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events) + b"\n"
    connection = _Chunks([body[i : i + size] for i in range(0, len(body), size)])
    got = [event async for event in ndjson(connection, "GET", "/x")]  # type: ignore[arg-type]
    assert got == events and connection.closed
    # Leaving early closes the connection (which ends a foreground command).
    connection = _Chunks([body])
    stream = ndjson(connection, "GET", "/x")  # type: ignore[arg-type]
    assert (await anext(stream)) == events[0]
    await stream.aclose()
    assert connection.closed
