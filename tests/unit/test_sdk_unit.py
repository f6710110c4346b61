"""The SDK against ``httpx.MockTransport``: no server, no network."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbank import (
    AsyncSandbox,
    CommandExitError,
    CommandResult,
    FileNotFound,
    InvalidState,
    NotFound,
    QuotaExceeded,
    SandbankError,
    Sandbox,
    SandboxInfo,
    SandboxNotFound,
    ServerUnreachable,
    Timeout,
    Unauthorized,
    ValidationFailed,
)
from sandbank.client._config import DEFAULT_BASE_URL, resolve_config
from sandbank.client._sync.files import CHUNK_SIZE

ROOT = Path(__file__).resolve().parents[2]
KEY = "sbk_unit_key"
URL = "http://127.0.0.1:7999"
Handler = Callable[[httpx.Request], httpx.Response]


def sandbox_json(sandbox_id: str = "sbx1", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": sandbox_id,
        "short_id": sandbox_id[:6],
        "name": f"sandbox-{sandbox_id}",
        "status": "running",
        "template": "base",
        "vcpu": 1.0,
        "memory_mb": 512,
        "disk_gb": 1,
        "region": "eu-north",
        "metadata": {},
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": "2025-01-01T00:05:00+00:00",
        "terminal_url": f"{URL}/terminal/{sandbox_id}",
        "killed_at": None,
        "kill_reason": None,
    }
    data.update(fields)
    return data


def entry_json(path: str, size: int = 0, kind: str = "file") -> dict[str, Any]:
    return {
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "type": kind,
        "size": size,
        "mode": 0o644,
        "permissions": "rw-r--r--",
        "owner": "user",
        "group": "user",
        "modified_at": "2025-01-01T00:00:00Z",
        "symlink_target": None,
    }


class Recorder:
    """A MockTransport whose handler also keeps every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self._handler = handler
        self.transport = httpx.MockTransport(self._sync_handle)
        self.async_transport = httpx.MockTransport(self._async_handle)

    def _sync_handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        self.requests.append(request)
        return self._handler(request)

    async def _async_handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        return self._handler(request)


def connected(handler: Handler) -> tuple[Sandbox, Recorder]:
    """A ``Sandbox`` for ``sbx1`` whose requests go to ``handler``."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/sandboxes/sbx1":
            return httpx.Response(200, json=sandbox_json())
        return handler(request)

    recorder = Recorder(route)
    sbx = Sandbox.connect("sbx1", api_key=KEY, base_url=URL, transport=recorder.transport)
    return sbx, recorder


# -- configuration -----------------------------------------------------------------


def test_config_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBANK_URL", "http://127.0.0.1:1111")
    monkeypatch.setenv("SANDBANK_API_KEY", "from-env")
    config = resolve_config(api_key="explicit", base_url="http://127.0.0.1:2222/")
    assert (config.base_url, config.api_key) == ("http://127.0.0.1:2222", "explicit")
    assert config.headers()["Authorization"] == "Bearer explicit"


def test_config_from_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBANK_URL", "http://127.0.0.1:1111")
    monkeypatch.setenv("SANDBANK_API_KEY", " from-env\n")
    assert resolve_config() == resolve_config(None, None)
    assert (resolve_config().base_url, resolve_config().api_key) == (
        "http://127.0.0.1:1111",
        "from-env",
    )
    monkeypatch.delenv("SANDBANK_URL")
    assert resolve_config().base_url == DEFAULT_BASE_URL == "http://127.0.0.1:7420"


def test_missing_key_fails_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBANK_API_KEY", raising=False)
    recorder = Recorder(lambda request: httpx.Response(500))
    with pytest.raises(Unauthorized, match="SANDBANK_API_KEY"):
        Sandbox.create(base_url=URL, transport=recorder.transport)
    assert recorder.requests == []


def test_bad_url_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SandbankError, match="http"):
        resolve_config(api_key=KEY, base_url="127.0.0.1:7420")


def test_requests_carry_the_key_and_parse_the_sandbox() -> None:
    recorder = Recorder(lambda request: httpx.Response(201, json=sandbox_json("new1")))
    sbx = Sandbox.create(
        "python",
        vcpu=2,
        envs={"A": "1"},
        metadata={"team": "x"},
        timeout=60,
        api_key=KEY,
        base_url=URL,
        transport=recorder.transport,
    )
    request = recorder.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert (request.method, str(request.url)) == ("POST", f"{URL}/v1/sandboxes")
    assert json.loads(recorder.bodies[0]) == {
        "template": "python",
        "vcpu": 2,
        "env": {"A": "1"},
        "metadata": {"team": "x"},
        "timeout": 60,
    }
    assert sbx.sandbox_id == "new1"
    assert isinstance(sbx.info, SandboxInfo)
    assert sbx.info.created_at.year == 2025 and sbx.info.expires_at is not None
    assert sbx.info.to_dict()["created_at"] == "2025-01-01T00:00:00+00:00"


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (404, {"code": "sandbox_not_found", "message": "m"}, SandboxNotFound, "sandbox_not_found"),
        (401, {"code": "unauthorized", "message": "m"}, Unauthorized, "unauthorized"),
        (409, {"code": "invalid_state", "message": "m"}, InvalidState, "invalid_state"),
        (422, {"code": "invalid_request", "message": "m"}, ValidationFailed, "invalid_request"),
        (429, {"code": "quota_exceeded", "message": "m"}, QuotaExceeded, "quota_exceeded"),
        (404, {"code": "gone_fishing", "message": "m"}, NotFound, "gone_fishing"),
        (422, {"detail": "m"}, ValidationFailed, "invalid_request"),
        (404, "m", NotFound, "not_found"),
        (418, "m", SandbankError, "http_418"),
    ],
)
def test_error_bodies_become_their_classes(
    status: int, body: Any, expected: type[SandbankError], code: str
) -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    recorder = Recorder(reply)
    with pytest.raises(expected) as raised:
        Sandbox.connect("sbx1", api_key=KEY, base_url=URL, transport=recorder.transport)
    assert raised.value.code == code
    assert raised.value.message == "m"


def test_error_details_are_kept() -> None:
    body = {"code": "sandbox_not_found", "message": "gone", "sandbox_id": "x", "killed": True}
    recorder = Recorder(lambda request: httpx.Response(404, json=body))
    with pytest.raises(SandboxNotFound) as raised:
        Sandbox.connect("x", api_key=KEY, base_url=URL, transport=recorder.transport)
    assert raised.value.details == {"sandbox_id": "x", "killed": True}
    assert str(raised.value) == "sandbox_not_found: gone"


def test_file_errors_map_and_exists_is_false() -> None:
    sbx, _ = connected(
        lambda request: httpx.Response(404, json={"code": "file_not_found", "message": "no"})
    )
    with pytest.raises(FileNotFound):
        sbx.files.read("/nope")
    assert sbx.files.exists("/nope") is False


def test_exists_does_not_hide_a_missing_sandbox() -> None:
    sbx, _ = connected(
        lambda request: httpx.Response(404, json={"code": "sandbox_not_found", "message": "no"})
    )
    with pytest.raises(SandboxNotFound):
        sbx.files.exists("/x")


def test_unreachable_server_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(ServerUnreachable) as raised:
        Sandbox.list(api_key=KEY, base_url=URL, transport=Recorder(refuse).transport)
    assert URL in raised.value.message
    assert raised.value.code == "server_unreachable"
    assert isinstance(raised.value, SandbankError)


def test_read_timeout_is_a_timeout() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(Timeout, match=URL):
        Sandbox.list(api_key=KEY, base_url=URL, transport=Recorder(stall).transport)


# -- listing -----------------------------------------------------------------------


def paged(request: httpx.Request) -> httpx.Response:
    pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
    ids, next_cursor = pages[request.url.params.get("cursor")]
    body = {"data": [sandbox_json(i) for i in ids], "next_cursor": next_cursor}
    return httpx.Response(200, json=body)


def test_list_follows_every_page_with_the_filters() -> None:
    recorder = Recorder(paged)
    found = Sandbox.list(
        status="running",
        metadata={"team": "x", "env": "ci"},
        limit=2,
        api_key=KEY,
        base_url=URL,
        transport=recorder.transport,
    )
    assert [info.id for info in found] == ["a", "b", "c", "d", "e"]
    assert [r.url.params.get("cursor") for r in recorder.requests] == [None, "c1", "c2"]
    for request in recorder.requests:
        params = request.url.params
        assert params["status"] == "running"
        assert params["metadata[team]"] == "x" and params["metadata[env]"] == "ci"
        assert params["limit"] == "2"


async def test_async_list_follows_every_page() -> None:
    recorder = Recorder(paged)
    found = await AsyncSandbox.list(api_key=KEY, base_url=URL, transport=recorder.async_transport)
    assert [info.id for info in found] == ["a", "b", "c", "d", "e"]
    assert "status" not in recorder.requests[0].url.params


# -- files -------------------------------------------------------------------------


class ChunkOnlyReader:
    """A file object that refuses to be read whole."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)
        self.sizes: list[int] = []

    def read(self, size: int = -1, /) -> bytes:
        assert size > 0, "a streamed upload must never read the whole file"
        self.sizes.append(size)
        return self._buffer.read(size)


def written(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=entry_json(request.url.params["path"], 1))


def test_write_streams_a_file_object_in_chunks() -> None:
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)
    source = ChunkOnlyReader(data)
    sbx, recorder = connected(written)
    entry = sbx.files.write("/home/user/big.bin", source, user="root")
    request = recorder.requests[-1]
    assert (request.method, request.url.path) == ("PUT", "/v1/sandboxes/sbx1/files")
    assert request.url.params["path"] == "/home/user/big.bin"
    assert request.url.params["user"] == "root"
    assert request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in request.headers
    assert recorder.bodies[-1] == data
    assert len(source.sizes) >= 4 and set(source.sizes) == {CHUNK_SIZE}
    assert entry.path == "/home/user/big.bin"


async def test_async_write_streams_a_file_object_and_async_chunks() -> None:
    recorder = Recorder(written)
    sbx = AsyncSandbox(SandboxInfo.from_dict(sandbox_json()), _async_connection(recorder))
    source = ChunkOnlyReader(b"x" * (CHUNK_SIZE + 1))
    await sbx.files.write("/f", source)
    assert recorder.bodies[-1] == b"x" * (CHUNK_SIZE + 1)
    assert len(source.sizes) == 3

    async def parts() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    await sbx.files.write("/g", parts())
    await sbx.files.write("/h", iter([b"sync ", b"chunks"]))
    assert recorder.bodies[-2:] == [b"one two", b"sync chunks"]
    await sbx.close()


def _async_connection(recorder: Recorder) -> Any:
    from sandbank.client._async._http import AsyncApiConnection

    return AsyncApiConnection.open(KEY, URL, recorder.async_transport)


def test_write_text_and_bytes_have_a_length() -> None:
    sbx, recorder = connected(written)
    sbx.files.write("/a.txt", "héllo")
    assert recorder.requests[-1].headers["content-length"] == str(len("héllo".encode()))
    assert recorder.bodies[-1] == "héllo".encode()
    sbx.files.write("/b.bin", b"\x00\x01")
    assert recorder.bodies[-1] == b"\x00\x01"


def test_read_stream_and_download(tmp_path: Path) -> None:
    payload = b"0123456789" * 10_000

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.params["path"] == "/missing":
            return httpx.Response(404, json={"code": "file_not_found", "message": "no"})
        return httpx.Response(200, content=payload)

    sbx, _ = connected(serve)
    assert b"".join(sbx.files.read_stream("/data")) == payload
    assert sbx.files.read("/data", format="bytes") == payload
    assert sbx.files.read("/data") == payload.decode()

    target = tmp_path / "data.bin"
    assert sbx.files.download("/data", target) == len(payload)
    assert target.read_bytes() == payload
    with pytest.raises(FileNotFound):
        sbx.files.download("/missing", tmp_path / "missing.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_file_calls_send_the_right_requests() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1/sandboxes/sbx1/files")
        if path == "/list":
            return httpx.Response(200, json={"entries": [entry_json("/d/a"), entry_json("/d/b")]})
        if path == "/mkdir":
            return httpx.Response(200, json={"created": True, "entry": entry_json("/d", 0, "dir")})
        if path == "/move":
            return httpx.Response(200, json=entry_json(json.loads(request.content)["destination"]))
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json=entry_json("/d", 0, "dir"))

    sbx, recorder = connected(reply)
    assert [e.name for e in sbx.files.list("/d", depth=2)] == ["a", "b"]
    assert recorder.requests[-1].url.params["depth"] == "2"
    assert sbx.files.make_dir("/d") is True
    assert sbx.files.rename("/d/a", "/d/c").path == "/d/c"
    assert json.loads(recorder.bodies[-1]) == {"source": "/d/a", "destination": "/d/c"}
    assert sbx.files.stat("/d").is_dir and sbx.files.get_info("/d").type == "dir"
    sbx.files.remove("/d", recursive=True)
    assert recorder.requests[-1].url.params["recursive"] == "true"


# -- commands and lifecycle ----------------------------------------------------------


def exec_reply(exit_code: int = 0) -> Handler:
    def reply(request: httpx.Request) -> httpx.Response:
        body = {
            "exit_code": exit_code,
            "stdout": "42\n",
            "stderr": "oops\n" if exit_code else "",
            "duration_ms": 3.5,
            "timed_out": False,
        }
        return httpx.Response(200, json=body)

    return reply


def test_run_sends_a_shell_string_or_an_argv() -> None:
    sbx, recorder = connected(exec_reply())
    result = sbx.commands.run("python3 -c 'print(40+2)'")
    assert result == CommandResult(0, "42\n", "", 3.5, False)
    assert json.loads(recorder.bodies[-1]) == {
        "command": "python3 -c 'print(40+2)'",
        "user": "user",
        "timeout": 60.0,
    }
    sbx.commands.run(["ls", "-l"], envs={"A": "1"}, cwd="/tmp", user="root", timeout=0, stdin="x")
    assert json.loads(recorder.bodies[-1]) == {
        "cmd": ["ls", "-l"],
        "env": {"A": "1"},
        "cwd": "/tmp",
        "user": "root",
        "timeout": 0.0,
        "stdin": "x",
    }
    assert recorder.requests[-1].url.path == "/v1/sandboxes/sbx1/exec"


def test_run_check_raises_with_the_result() -> None:
    sbx, _ = connected(exec_reply(3))
    assert sbx.commands.run("false").exit_code == 3
    with pytest.raises(CommandExitError) as raised:
        sbx.commands.run("false", check=True)
    assert raised.value.exit_code == 3
    assert raised.value.result.stderr == "oops\n"
    assert "code 3" in raised.value.message and "oops" in raised.value.message
    assert isinstance(raised.value, SandbankError)


def test_kill_works_on_the_class_and_on_an_instance() -> None:
    recorder = Recorder(lambda request: httpx.Response(204))
    Sandbox.kill("abc", api_key=KEY, base_url=URL, transport=recorder.transport)
    assert (recorder.requests[-1].method, recorder.requests[-1].url.path) == (
        "DELETE",
        "/v1/sandboxes/abc",
    )
    sbx, own = connected(lambda request: httpx.Response(204))
    sbx.kill()
    assert (own.requests[-1].method, own.requests[-1].url.path) == ("DELETE", "/v1/sandboxes/sbx1")


def test_ids_cannot_escape_their_route() -> None:
    recorder = Recorder(lambda request: httpx.Response(204))
    Sandbox.kill("../keys", api_key=KEY, base_url=URL, transport=recorder.transport)
    assert recorder.requests[-1].url.raw_path == b"/v1/sandboxes/..%2Fkeys"


def test_context_manager_kills_on_exit_even_if_already_gone() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "sandbox_not_found", "message": "gone"})

    sbx, recorder = connected(reply)
    with sbx as inside:
        assert inside is sbx
    assert recorder.requests[-1].method == "DELETE"


def test_info_timeout_metrics_and_running() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/timeout"):
            return httpx.Response(200, json=sandbox_json(expires_at="2025-01-01T01:00:00Z"))
        return httpx.Response(
            200,
            json={
                "cpu_percent": 1.5,
                "cpu_usage_seconds": 0.25,
                "memory_bytes": 10,
                "memory_limit_bytes": 512 * 2**20,
                "disk_bytes": 0,
                "disk_limit_bytes": 2**30,
                "pids": 2,
                "pids_limit": 1024,
                "timestamp": "2025-01-01T00:00:01Z",
            },
        )

    sbx, recorder = connected(reply)
    assert sbx.set_timeout(3600).expires_at == sbx.info.expires_at
    assert json.loads(recorder.bodies[-1]) == {"timeout": 3600}
    assert sbx.get_metrics().pids_limit == 1024
    assert sbx.is_running() is True
    assert sbx.get_info().status == "running"


async def test_async_sandbox_lifecycle() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/sandboxes":
            return httpx.Response(201, json=sandbox_json("as1"))
        if request.url.path.endswith("/exec"):
            return exec_reply()(request)
        return httpx.Response(204)

    recorder = Recorder(reply)
    async with await AsyncSandbox.create(
        api_key=KEY, base_url=URL, transport=recorder.async_transport
    ) as sbx:
        assert (await sbx.commands.run("true")).stdout == "42\n"
    assert [r.method for r in recorder.requests] == ["POST", "POST", "DELETE"]
    await AsyncSandbox.kill("as2", api_key=KEY, base_url=URL, transport=recorder.async_transport)
    assert recorder.requests[-1].url.path == "/v1/sandboxes/as2"


# -- the generated twin ----------------------------------------------------------------


def test_sync_twin_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_sync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
