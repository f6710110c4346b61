"""The Python SDK against the real server (the ``server`` fixture of tests/conftest.py).

Every test kills the sandboxes it creates, also when it fails.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbank import (
    AsyncSandbox,
    CommandExitError,
    CommandResult,
    EntryInfo,
    FileNotFound,
    Sandbox,
    SandboxInfo,
    SandboxMetrics,
    SandboxNotFound,
    Unauthorized,
)
from tests.support.server import ServerProcess

HOME = "/home/user"


def _auth(server: ServerProcess) -> dict[str, str]:
    return {"base_url": server.url, "api_key": server.api_key}


def _kill_quietly(server: ServerProcess, sandbox_id: str) -> None:
    with contextlib.suppress(SandboxNotFound):
        Sandbox.kill(sandbox_id, **_auth(server))


@pytest.fixture
def sbx(server: ServerProcess) -> Iterator[Sandbox]:
    sbx = Sandbox.create(**_auth(server), metadata={"suite": "sdk-e2e"})
    try:
        yield sbx
    finally:
        _kill_quietly(server, sbx.sandbox_id)
        sbx.close()


def test_issue_example(server: ServerProcess) -> None:
    sbx = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        assert sbx.commands.run("python3 -c 'print(40+2)'").stdout == "42\n"
    finally:
        sbx.kill()
        sbx.close()


def test_commands(sbx: Sandbox) -> None:
    result = sbx.commands.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert isinstance(result, CommandResult)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out
    assert result.duration_ms >= 0

    shell = sbx.commands.run('echo "$GREETING from $(pwd)"', envs={"GREETING": "hi"}, cwd="/")
    assert shell.stdout == "hi from /\n"
    assert sbx.commands.run("cat", stdin="piped").stdout == "piped"
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"

    with pytest.raises(CommandExitError) as failed:
        sbx.commands.run("exit 5", check=True)
    assert failed.value.exit_code == 5
    assert failed.value.result.exit_code == 5

    slow = sbx.commands.run("sleep 30", timeout=1)
    assert slow.timed_out


def test_files(sbx: Sandbox, tmp_path: Path) -> None:
    files = sbx.files
    base = f"{HOME}/sdk-files"
    assert files.make_dir(base) is True
    assert files.make_dir(base) is False

    entry = files.write(f"{base}/hello.txt", "hello\n")
    assert isinstance(entry, EntryInfo)
    assert (entry.name, entry.type, entry.size) == ("hello.txt", "file", 6)
    assert files.read(f"{base}/hello.txt") == "hello\n"
    assert files.read(f"{base}/hello.txt", format="bytes") == b"hello\n"

    blob = bytes(range(256)) * 8192  # 2 MiB, several upload chunks
    files.write(f"{base}/blob.bin", io.BytesIO(blob))
    assert files.read(f"{base}/blob.bin", format="bytes") == blob
    assert b"".join(files.read_stream(f"{base}/blob.bin")) == blob
    files.write(f"{base}/chunks.bin", iter([b"a" * 10, b"b" * 10]))
    assert files.stat(f"{base}/chunks.bin").size == 20

    names = {item.name for item in files.list(base)}
    assert {"hello.txt", "blob.bin", "chunks.bin"} <= names
    info = files.get_info(base)
    assert info.is_dir and info.type == "dir"

    assert files.exists(f"{base}/hello.txt")
    assert not files.exists(f"{base}/missing.txt")
    with pytest.raises(FileNotFound):
        files.read(f"{base}/missing.txt")

    moved = files.rename(f"{base}/hello.txt", f"{base}/renamed.txt")
    assert moved.path == f"{base}/renamed.txt"
    assert not files.exists(f"{base}/hello.txt")
    files.remove(f"{base}/renamed.txt")
    assert not files.exists(f"{base}/renamed.txt")

    local = tmp_path / "blob.bin"
    assert files.download(f"{base}/blob.bin", local) == len(blob)
    assert local.read_bytes() == blob
    uploaded = files.upload(local, f"{base}/uploaded.bin")
    assert uploaded.size == len(blob)
    assert sbx.commands.run(f"wc -c < {base}/uploaded.bin").stdout.strip() == str(len(blob))

    files.remove(base, recursive=True)
    assert not files.exists(base)


def test_info_timeout_metrics(server: ServerProcess, sbx: Sandbox) -> None:
    info = sbx.get_info()
    assert isinstance(info, SandboxInfo)
    assert info.id == sbx.sandbox_id
    assert info.status == "running"
    assert info.metadata == {"suite": "sdk-e2e"}
    assert sbx.is_running()

    extended = sbx.set_timeout(1200)
    assert extended.expires_at is not None and info.expires_at is not None
    assert extended.expires_at > info.expires_at

    metrics = sbx.get_metrics()
    assert isinstance(metrics, SandboxMetrics)
    assert metrics.memory_limit_bytes > 0
    assert metrics.pids_limit > 0

    label = uuid.uuid4().hex
    tagged = Sandbox.create(**_auth(server), metadata={"label": label}, timeout=120)
    try:
        found = Sandbox.list(metadata={"label": label}, **_auth(server))
        assert [item.id for item in found] == [tagged.sandbox_id]
    finally:
        tagged.kill()
        tagged.close()


def test_kill_and_errors(server: ServerProcess) -> None:
    sbx = Sandbox.create(**_auth(server))
    try:
        sbx.kill()
        assert not sbx.is_running()
        with pytest.raises(SandboxNotFound):
            sbx.commands.run("true")
        with pytest.raises(SandboxNotFound):
            Sandbox.connect(sbx.sandbox_id, **_auth(server))
        Sandbox.kill(sbx.sandbox_id, **_auth(server))  # killing twice is fine
    finally:
        _kill_quietly(server, sbx.sandbox_id)
        sbx.close()

    with pytest.raises(SandboxNotFound):
        Sandbox.connect("nosuchsandbox0000", **_auth(server))
    with pytest.raises(Unauthorized):
        Sandbox.list(base_url=server.url, api_key="sb-not-a-real-key")


def test_context_manager_kills(server: ServerProcess) -> None:
    with Sandbox.create(**_auth(server)) as sbx:
        sandbox_id = sbx.sandbox_id
        try:
            assert sbx.commands.run("echo inside").stdout == "inside\n"
        except BaseException:
            _kill_quietly(server, sandbox_id)
            raise
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sandbox_id, **_auth(server))
    assert sandbox_id not in {item.id for item in Sandbox.list(**_auth(server))}


@pytest.fixture
async def async_sandbox(server: ServerProcess) -> AsyncIterator[AsyncSandbox]:
    sbx = await AsyncSandbox.create(**_auth(server))
    try:
        yield sbx
    finally:
        with contextlib.suppress(SandboxNotFound):
            await AsyncSandbox.kill(sbx.sandbox_id, **_auth(server))
        await sbx.close()


async def test_async_basics(server: ServerProcess, async_sandbox: AsyncSandbox) -> None:
    sbx = async_sandbox
    result = await sbx.commands.run("python3 -c 'print(40+2)'")
    assert result.stdout == "42\n"
    assert (await sbx.commands.run(["sh", "-c", "exit 4"])).exit_code == 4

    path = f"{HOME}/async.txt"
    await sbx.files.write(path, b"async bytes")
    assert await sbx.files.read(path) == "async bytes"

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two"):
            yield part

    await sbx.files.write(path, chunks())
    assert b"".join([chunk async for chunk in sbx.files.read_stream(path)]) == b"one two"
    assert await sbx.files.exists(path)
    assert path in {entry.path for entry in await sbx.files.list(HOME)}
    await sbx.files.remove(path)
    assert not await sbx.files.exists(path)

    info = await sbx.get_info()
    assert info.status == "running" and await sbx.is_running()
    assert (await sbx.get_metrics()).pids_limit > 0
    listed = await AsyncSandbox.list(**_auth(server))
    assert sbx.sandbox_id in {item.id for item in listed}


async def test_async_context_manager_and_errors(server: ServerProcess) -> None:
    async with await AsyncSandbox.create(**_auth(server)) as sbx:
        sandbox_id = sbx.sandbox_id
        assert (await sbx.commands.run("echo hi")).stdout == "hi\n"
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect(sandbox_id, **_auth(server))
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect("nosuchsandbox0000", **_auth(server))
