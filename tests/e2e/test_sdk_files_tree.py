"""The SDKs' (blocking and asyncio) and the CLI's directory transfers, batches,
chmod/chown, find, text reads and watches, against the real server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbank import AsyncSandbox, FileExists, FileNotFound, InvalidPath, Sandbox
from sandbank.client.watch import FilesystemEvent
from sandbank.errors import NotText, PayloadTooLarge
from tests.support.server import ServerProcess

HOME = "/home/user"


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        yield box
    finally:
        box.kill()
        box.close()


@pytest.fixture
async def async_sandbox(server: ServerProcess, sandbox: Sandbox) -> AsyncIterator[AsyncSandbox]:
    box = await AsyncSandbox.connect(
        sandbox.sandbox_id, base_url=server.url, api_key=server.api_key
    )
    try:
        yield box
    finally:
        await box.close()


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(700_000))
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "empty").mkdir()
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("pkg/mod.py")


def same_tree(a: Path, b: Path) -> None:
    def listing(root: Path) -> list[tuple[str, str, bytes | str]]:
        out = []
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out.append((rel, "link", os.readlink(path)))
            elif path.is_dir():
                out.append((rel, "dir", ""))
            else:
                out.append((rel, oct(path.stat().st_mode & 0o777), path.read_bytes()))
        return out

    assert listing(a) == listing(b)


def test_directories_both_ways(sandbox: Sandbox, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    entry = sandbox.files.upload_dir(tmp_path / "src", "proj")
    assert (entry.path, entry.type, entry.owner) == (f"{HOME}/proj", "dir", "user")
    assert sandbox.files.read("proj/pkg/mod.py") == "x = 1\n"
    with pytest.raises(FileExists):
        sandbox.files.upload_dir(tmp_path / "src", "proj")
    written = sandbox.files.download_dir("proj", tmp_path / "back")
    assert written == 700_000 + 6 + 10
    same_tree(tmp_path / "src", tmp_path / "back")
    with pytest.raises(FileExists):
        sandbox.files.download_dir("proj", tmp_path / "back")
    (tmp_path / "src" / "added.txt").write_text("new")
    sandbox.files.upload_dir(tmp_path / "src", "proj", overwrite=True)
    sandbox.files.download_dir("proj", tmp_path / "back", overwrite=True)
    same_tree(tmp_path / "src", tmp_path / "back")
    with pytest.raises(FileNotFound):
        sandbox.files.download_dir("nowhere", tmp_path / "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "src"]


def test_download_refuses_links_out(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.commands.run(f"mkdir -p {HOME}/evil && ln -s /etc/passwd {HOME}/evil/pw")
    with pytest.raises(InvalidPath, match="outside"):
        sandbox.files.download_dir("evil", tmp_path / "evil")
    assert list(tmp_path.iterdir()) == []


def test_write_files_chmod_chown_find_text(sandbox: Sandbox) -> None:
    entries = sandbox.files.write_files(
        [
            {"path": "batch/a.txt", "data": "alpha"},
            {"path": "/tmp/batch/b.bin", "data": b"\x00\x01", "mode": 0o600},
            {"path": "batch/c.txt", "data": io.BytesIO(b"from a file")},
        ]
    )
    assert [(e.path, e.size, e.mode) for e in entries] == [
        (f"{HOME}/batch/a.txt", 5, 0o644),
        ("/tmp/batch/b.bin", 2, 0o600),
        (f"{HOME}/batch/c.txt", 11, 0o644),
    ]
    assert sandbox.files.read("batch/c.txt") == "from a file"
    assert sandbox.files.chmod("batch/a.txt", 0o751).permissions == "rwxr-x--x"
    assert (
        sandbox.files.chown("/tmp/batch", owner="user", group="user", recursive=True).owner
        == "user"
    )
    assert sandbox.commands.run("stat -c %U /tmp/batch/b.bin").stdout == "user\n"
    found = sandbox.files.find("batch", "*.txt")
    assert [e.name for e in found] == ["a.txt", "c.txt"]
    with pytest.raises(PayloadTooLarge):
        sandbox.files.find("batch", "**", limit=1)
    assert sandbox.files.read("batch/a.txt", encoding="utf-8") == "alpha"
    sandbox.files.write("bad.txt", b"ok\xff")
    assert sandbox.files.read("bad.txt") == "ok\ufffd"  # no encoding: lenient, as before
    with pytest.raises(NotText, match="byte 2"):
        sandbox.files.read("bad.txt", encoding="utf-8")


def inotify_fds(sandbox: Sandbox) -> int:
    """inotify instances the agent (PID 1 of the sandbox) holds open."""
    command = "ls -l /proc/1/fd | grep -c anon_inode:inotify || true"
    return int(sandbox.commands.run(command, user="root").stdout)


def test_sync_watch_polls_and_stops(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("w-sync")
    handle = sandbox.files.watch_dir("w-sync")
    sandbox.files.write("w-sync/one.txt", "1")
    deadline = time.monotonic() + 5
    events: list[FilesystemEvent] = []
    while time.monotonic() < deadline and ("create", "one.txt") not in {
        (e.type, e.name) for e in events
    }:
        events += handle.get_new_events()
        time.sleep(0.05)
    assert ("create", "one.txt") in {(e.type, e.name) for e in events}
    assert inotify_fds(sandbox) == 1
    started = time.monotonic()
    handle.stop()
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + 3
    while inotify_fds(sandbox) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inotify_fds(sandbox) == 0  # the sandbox dropped the watch
    with pytest.raises(FileNotFound):
        sandbox.files.watch_dir("no-such-dir")


async def test_async_watch_with_callback(async_sandbox: AsyncSandbox) -> None:
    await async_sandbox.files.make_dir("w-async/sub")
    got: list[FilesystemEvent] = []
    exits: list[Exception | None] = []
    arrived = asyncio.Event()

    async def on_event(event: FilesystemEvent) -> None:
        got.append(event)
        if event.name == "sub/deep/x.txt" and event.type == "create":
            arrived.set()

    handle = await async_sandbox.files.watch_dir(
        "w-async", on_event, recursive=True, on_exit=exits.append
    )
    await async_sandbox.commands.run(
        f"mkdir -p {HOME}/w-async/sub/deep && sleep 0.2 && echo x > {HOME}/w-async/sub/deep/x.txt"
    )
    await asyncio.wait_for(arrived.wait(), 5)
    assert ("create", "sub/deep", True) in {(e.type, e.name, e.is_dir) for e in got}
    await handle.stop()
    assert exits == []  # stop() is not an exit of the watch itself
    assert handle.get_new_events() == []  # with a callback nothing queues
    # A watch whose directory goes away ends by itself.
    ended = asyncio.Event()
    handle = await async_sandbox.files.watch_dir(
        "w-async", lambda _: None, on_exit=lambda exc: (exits.append(exc), ended.set())
    )
    await async_sandbox.files.remove("w-async", recursive=True)
    await asyncio.wait_for(ended.wait(), 5)
    assert exits == [None]
    await handle.stop()


async def test_async_directories(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    await async_sandbox.files.upload_dir(tmp_path / "src", "/tmp/async-proj")
    await async_sandbox.files.download_dir("/tmp/async-proj", tmp_path / "back")
    same_tree(tmp_path / "src", tmp_path / "back")


def test_cli_cp_recursive_and_watch(
    sandbox: Sandbox, client_env: dict[str, str], tmp_path: Path
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandbank.cli", *args],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    make_tree(tmp_path / "src")
    sandbox.files.make_dir("inbox")
    refused = cli("cp", str(tmp_path / "src"), f"{sandbox.sandbox_id}:{HOME}/inbox")
    assert refused.returncode != 0 and "cp -r" in refused.stderr
    done = cli("cp", "-r", str(tmp_path / "src"), f"{sandbox.sandbox_id}:{HOME}/inbox")
    assert done.returncode == 0, done.stderr
    assert sandbox.files.read("inbox/src/pkg/mod.py") == "x = 1\n"  # into the existing dir
    (tmp_path / "down").mkdir()
    done = cli("cp", "-r", f"{sandbox.sandbox_id}:{HOME}/inbox/src", str(tmp_path / "down"))
    assert done.returncode == 0, done.stderr
    same_tree(tmp_path / "src", tmp_path / "down" / "src")

    sandbox.files.make_dir("/tmp/cli-watch")
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbank.cli",
            "files",
            "watch",
            sandbox.sandbox_id,
            "/tmp/cli-watch",
        ],
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30  # the CLI's start-up, on a busy machine
            while not inotify_fds(sandbox) and time.monotonic() < deadline:
                time.sleep(0.1)
            sandbox.files.write("/tmp/cli-watch/seen.txt", "x")
            time.sleep(0.3)
            sandbox.files.remove("/tmp/cli-watch", recursive=True)  # ends the watch
            out, err = proc.communicate(timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    assert proc.returncode == 0, err
    assert "create  seen.txt" in out
