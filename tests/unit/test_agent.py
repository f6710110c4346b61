"""The in-sandbox agent, run for real as a host process (``python -S``, only
``src`` on its path, as inside a sandbox) and driven through ``AgentClient``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbank.errors import (
    BadRequest,
    Conflict,
    FileExists,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    SandboxUnavailable,
)
from sandbank.protocol.agent import FILE_CHUNK
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import ExecSpec

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    socket: Path
    homes: Path
    client: AgentClient

    @property
    def home(self) -> Path:
        return self.homes / "user"


def spawn_agent(socket_path: Path, homes: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(SRC),
        "SANDBANK_AGENT_HOME_ROOT": str(homes),
        "SANDBANK_AGENT_ETC": str(homes.parent / "etc"),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-S", "-m", "sandbank.agent", "--socket", str(socket_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_agent(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextlib.asynccontextmanager
async def running_agent(root: Path, socket_path: Path) -> AsyncIterator[Agent]:
    homes = root / "home"
    for name in ("user", "root"):
        (homes / name).mkdir(parents=True, exist_ok=True)
    proc = spawn_agent(socket_path, homes, root / "agent.log")
    try:
        client = AgentClient(socket_path)
        await client.wait_ready(10)
        yield Agent(proc, socket_path, homes, client)
    finally:
        if proc.poll() is None:
            stop_agent(proc)


@pytest.fixture(scope="module")
async def agent(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Agent]:
    root = tmp_path_factory.mktemp("agent")
    async with running_agent(root, root / "run" / "agent.sock") as running:
        yield running


async def chunks_of(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(client: AgentClient, path: str) -> bytes:
    return b"".join([chunk async for chunk in client.read_file(path)])


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(is_gone(pid) for pid in pids):
            return True
        await asyncio.sleep(0.02)
    return False


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def read_pids(path: Path, count: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().split()
            if len(lines) >= count:
                return [int(x) for x in lines]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never listed {count} pids")


def children_of(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry.name), fields[0]))
    return found


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


# -- exec ------------------------------------------------------------------------------


async def test_exec_streams_stdout_stderr_and_exit_code(agent: Agent) -> None:
    result = await agent.client.exec(
        ExecSpec(["bash", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    )
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
    assert not result.timed_out
    assert isinstance(result.pid, int)
    assert result.duration_ms > 0


async def test_exec_header_comes_early_and_with_a_quick_exit(agent: Agent) -> None:
    """The ``ok`` header of a silent, long command is not held back until its
    exit; that of a quick one arrives in the same write as the exit."""
    from sandbank.protocol.agent import HEADER, decode_json, encode_json

    loop = asyncio.get_running_loop()

    async def first_read(cmd: list[str]) -> tuple[float, list[dict[str, object]]]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(agent.socket))
            await loop.sock_sendall(sock, encode_json({"op": "exec", "cmd": cmd, "timeout": 10}))
            started = time.monotonic()
            data = await loop.sock_recv(sock, 65536)
            elapsed = time.monotonic() - started
        frames = []
        while data:
            kind, length = HEADER.unpack_from(data)
            assert kind == b"J"
            frames.append(decode_json(data[HEADER.size : HEADER.size + length]))
            data = data[HEADER.size + length :]
        return elapsed, frames

    elapsed, frames = await first_read(["sleep", "1"])
    assert elapsed < 0.5 and frames[0]["ok"] is True
    _, frames = await first_read(["true"])
    assert [f.get("ok", f.get("exit_code")) for f in frames] == [True, 0]


async def test_exec_death_by_signal_is_128_plus_signo(agent: Agent) -> None:
    result = await agent.client.exec(ExecSpec(["bash", "-c", "kill -TERM $$"], timeout=10))
    assert result.exit_code == 128 + signal.SIGTERM


async def test_exec_large_output(agent: Agent) -> None:
    result = await agent.client.exec(ExecSpec(["head", "-c", "5000000", "/dev/zero"], timeout=10))
    assert result.stdout == bytes(5_000_000)


async def test_exec_stdin(agent: Agent) -> None:
    data = b"hello\x00world\n" * 10_000
    result = await agent.client.exec(ExecSpec(["cat"], stdin=data, timeout=10))
    assert result.stdout == data
    # Without stdin the command reads /dev/null instead of waiting forever.
    result = await agent.client.exec(ExecSpec(["cat"], timeout=10))
    assert (result.stdout, result.exit_code) == (b"", 0)


async def test_exec_env_has_defaults_and_nothing_of_the_agent(agent: Agent) -> None:
    result = await agent.client.exec(ExecSpec(["env"], env={"FOO": "bar", "LANG": "C"}, timeout=10))
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert env["FOO"] == "bar"
    assert env["LANG"] == "C"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["HOME"] == str(agent.home)
    assert env["USER"] == env["LOGNAME"] == "user"
    assert env["SHELL"] == "/bin/bash"
    assert "PYTHONPATH" not in env and "SANDBANK_AGENT_HOME_ROOT" not in env


async def test_exec_cwd(agent: Agent) -> None:
    (agent.home / "project").mkdir(exist_ok=True)
    result = await agent.client.exec(ExecSpec(["pwd"], timeout=10))
    assert result.stdout.decode().strip() == str(agent.home)
    result = await agent.client.exec(ExecSpec(["pwd"], cwd="project", timeout=10))
    assert result.stdout.decode().strip() == str(agent.home / "project")
    result = await agent.client.exec(ExecSpec(["pwd"], cwd="/", timeout=10))
    assert result.stdout == b"/\n"


async def test_exec_missing_cwd_is_file_not_found(agent: Agent) -> None:
    with pytest.raises(FileNotFound, match="/nowhere/at-all"):
        await agent.client.exec(ExecSpec(["pwd"], cwd="/nowhere/at-all", timeout=10))


async def test_exec_unknown_user_and_command(agent: Agent) -> None:
    with pytest.raises(BadRequest, match="no-such-user"):
        await agent.client.exec(ExecSpec(["true"], user="no-such-user", timeout=10))
    result = await agent.client.exec(ExecSpec(["no-such-command-xyz"], timeout=10))
    assert result.exit_code == 127
    assert b"no-such-command-xyz: command not found" in result.stderr


async def test_exec_as_root(agent: Agent) -> None:
    result = await agent.client.exec(
        ExecSpec(["bash", "-c", 'id -u; echo "$HOME"'], user="root", timeout=10)
    )
    assert result.stdout.decode().split() == [str(os.geteuid()), str(agent.homes / "root")]


@needs_root
async def test_exec_switches_to_the_requested_user(agent: Agent) -> None:
    nobody = pwd.getpwnam("nobody")
    result = await agent.client.exec(ExecSpec(["id", "-u"], user="nobody", cwd="/", timeout=10))
    assert result.stdout == f"{nobody.pw_uid}\n".encode()
    # Every id of the command is the user's (none left over from the agent's switch),
    # it has no capability, and its signals start at their defaults (the standard
    # ones: glibc's posix_spawn leaves its own two internal signals ignored).
    script = "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|SigIgn|SigBlk):' /proc/self/status"
    result = await agent.client.exec(
        ExecSpec(["sh", "-c", script], user="nobody", cwd="/", timeout=10)
    )
    status = dict(line.split(":", 1) for line in result.stdout.decode().splitlines())
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert int(status["SigIgn"], 16) & 0x7FFFFFFF == 0
    assert int(status["SigBlk"], 16) == 0


@needs_root
async def test_exec_starts_in_a_directory_the_user_may_not_enter(
    agent: Agent, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = await agent.client.exec(
        ExecSpec(["sh", "-c", "pwd; ls . >/dev/null"], user="nobody", cwd=str(private))
    )
    assert result.stdout.decode().strip() == str(private)
    assert result.exit_code != 0  # in it, but not allowed to look


async def test_exec_of_something_not_executable_is_126(agent: Agent, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("echo hi\n")
    result = await agent.client.exec(ExecSpec([str(script)], timeout=10))
    assert result.exit_code == 126
    assert b"permission denied" in result.stderr
    result = await agent.client.exec(ExecSpec(["sh", "-c", "echo $PPID"], user="root"))
    assert result.exit_code == 0  # the agent still serves after a failed start


@needs_root
def test_spawn_falls_back_to_popen_where_the_thread_cannot_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandbank.agent import spawn
    from sandbank.agent.base import Identity

    monkeypatch.setattr(spawn, "_numbers", None)
    nobody = pwd.getpwnam("nobody")
    who = Identity("nobody", nobody.pw_uid, nobody.pw_gid, [nobody.pw_gid], "/")
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        started = spawn.spawn(["id", "-u"], {"PATH": "/usr/bin:/bin"}, "/", who, stdin)
    finally:
        os.close(stdin)
    assert started.popen is not None
    started.popen.returncode = 0  # the agent's reaper would; keep Popen from waiting
    out = b""
    while chunk := os.read(started.stdout, 100):
        out += chunk
    os.close(started.stdout)
    os.close(started.stderr)
    _, status = os.waitpid(started.pid, 0)
    assert (out, os.waitstatus_to_exitcode(status)) == (f"{nobody.pw_uid}\n".encode(), 0)


async def test_exec_timeout_kills_the_whole_process_group(agent: Agent, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pidfile}; (sleep 60 & echo $! >> {pidfile}; wait) & wait"
    pids: list[int] = []
    try:
        started = time.monotonic()
        result = await agent.client.exec(ExecSpec(["bash", "-c", script], timeout=0.5))
        assert time.monotonic() - started < 5
        assert result.timed_out
        assert result.exit_code == 128 + signal.SIGKILL
        pids = await read_pids(pidfile, 2)
        assert await wait_gone(pids), "a grandchild survived the timeout"
    finally:
        kill_all(pids)


async def test_exec_backgrounded_grandchild_does_not_hang_the_call(agent: Agent) -> None:
    started = time.monotonic()
    result = await agent.client.exec(
        ExecSpec(["bash", "-c", "sleep 30 & echo started"], timeout=20)
    )
    try:
        assert time.monotonic() - started < 3
        assert (result.stdout, result.exit_code, result.timed_out) == (b"started\n", 0, False)
    finally:
        assert result.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(result.pid, signal.SIGKILL)


async def test_client_going_away_kills_the_process_group(agent: Agent, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait"
    task = asyncio.create_task(agent.client.exec(ExecSpec(["bash", "-c", script], timeout=None)))
    pids: list[int] = []
    try:
        pids = await read_pids(pidfile, 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await wait_gone(pids), "the command outlived its client"
    finally:
        task.cancel()
        kill_all(pids)


async def test_agent_reaps_its_children(agent: Agent) -> None:
    for _ in range(5):
        await agent.client.exec(ExecSpec(["true"], timeout=10))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not [pid for pid, state in children_of(agent.proc.pid) if state == "Z"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"zombies under the agent: {children_of(agent.proc.pid)}")


# -- files -----------------------------------------------------------------------------


async def test_write_read_round_trip(agent: Agent, tmp_path: Path) -> None:
    target = tmp_path / "hello.txt"
    entry = await agent.client.write_file(str(target), chunks_of([b"hello ", b"world"]))
    assert (entry.path, entry.name) == (str(target), "hello.txt")
    assert (entry.type, entry.size) == ("file", 11)
    assert entry.permissions == "rw-r--r--" and entry.mode == 0o644
    assert await read_all(agent.client, str(target)) == b"hello world"
    # An overwrite keeps the file's mode; an explicit mode wins.
    target.chmod(0o600)
    entry = await agent.client.write_file(str(target), chunks_of([b"again"]))
    assert (entry.mode, target.read_bytes()) == (0o600, b"again")
    entry = await agent.client.write_file(str(target), chunks_of([b"x"]), mode=0o755)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 == entry.mode


async def test_empty_file(agent: Agent, tmp_path: Path) -> None:
    entry = await agent.client.write_file(str(tmp_path / "empty"), chunks_of([]))
    assert entry.size == 0
    assert await read_all(agent.client, str(tmp_path / "empty")) == b""


async def test_64_mib_file_streams_both_ways(agent: Agent, tmp_path: Path) -> None:
    block = os.urandom(1 << 20)
    sent = hashlib.sha256()

    async def source() -> AsyncIterator[bytes]:
        for i in range(64):
            chunk = i.to_bytes(4, "big") + block[4:]
            sent.update(chunk)
            yield chunk

    target = tmp_path / "big.bin"
    entry = await agent.client.write_file(str(target), source())
    assert entry.size == 64 << 20
    got = hashlib.sha256()
    largest = 0
    async for chunk in agent.client.read_file(str(target)):
        got.update(chunk)
        largest = max(largest, len(chunk))
    assert got.hexdigest() == sent.hexdigest()
    assert largest <= FILE_CHUNK


async def test_write_creates_parents(agent: Agent) -> None:
    entry = await agent.client.write_file("deep/er/est/file.txt", chunks_of([b"x"]))
    assert entry.path == str(agent.home / "deep/er/est/file.txt")
    assert (agent.home / "deep/er/est/file.txt").read_bytes() == b"x"


async def test_aborted_upload_leaves_nothing(agent: Agent, tmp_path: Path) -> None:
    existing = tmp_path / "keep.txt"
    existing.write_bytes(b"original")

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 300_000
        yield b"b" * 300_000
        raise RuntimeError("uploader went away")

    for target in (tmp_path / "new.txt", existing, tmp_path / "fresh" / "dirs" / "f.txt"):
        with pytest.raises(RuntimeError, match="uploader went away"):
            await agent.client.write_file(str(target), broken())
    # The agent notices the hang-up on its own thread: give it a moment.
    deadline = time.monotonic() + 5
    while sorted(p.name for p in tmp_path.iterdir()) != ["keep.txt"]:
        assert time.monotonic() < deadline, f"left behind: {list(tmp_path.iterdir())}"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert existing.read_bytes() == b"original"


async def test_write_onto_a_directory_is_refused_early(agent: Agent, tmp_path: Path) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(2000):
            pulled += 1
            yield b"z" * 65536
            await asyncio.sleep(0.001)

    with pytest.raises(IsADirectory):
        await agent.client.write_file(str(tmp_path), endless())
    assert pulled < 2000, "the client kept sending after the agent refused"
    with pytest.raises(IsADirectory):
        await agent.client.write_file("/", chunks_of([b"x"]))


async def test_read_errors_come_before_the_first_chunk(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(IsADirectory):
        await anext(agent.client.read_file(str(tmp_path)))
    with pytest.raises(FileNotFound):
        await anext(agent.client.read_file(str(tmp_path / "missing")))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectory):
        await anext(agent.client.read_file(str(tmp_path / "file" / "below")))


async def test_invalid_paths(agent: Agent) -> None:
    with pytest.raises(InvalidPath):
        await agent.client.stat("")
    with pytest.raises(InvalidPath):
        await agent.client.stat("a\0b")
    with pytest.raises(InvalidPath):
        await agent.client.write_file("", chunks_of([b"x"]))


async def test_list_depth_and_symlinks(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_bytes(b"d")
    (tmp_path / "a" / "one.txt").write_bytes(b"1")
    (tmp_path / "top.txt").write_bytes(b"top")
    (tmp_path / "link").symlink_to(tmp_path / "a")

    def rel(entries: list) -> list[str]:  # type: ignore[type-arg]
        return [str(Path(e.path).relative_to(tmp_path)) for e in entries]

    shallow = await agent.client.list_dir(str(tmp_path))
    assert rel(shallow) == ["a", "link", "top.txt"]
    assert [e.type for e in shallow] == ["dir", "symlink", "file"]
    assert shallow[1].symlink_target == str(tmp_path / "a")
    deeper = await agent.client.list_dir(str(tmp_path), depth=2)
    assert rel(deeper) == ["a", "a/b", "a/one.txt", "link", "top.txt"]
    everything = await agent.client.list_dir(str(tmp_path), depth=5)
    assert "a/b/deep.txt" in rel(everything)
    assert not any(p.startswith("link/") for p in rel(everything))
    with pytest.raises(NotADirectory):
        await agent.client.list_dir(str(tmp_path / "top.txt"))
    with pytest.raises(FileNotFound):
        await agent.client.list_dir(str(tmp_path / "missing"))


async def test_stat(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "l").symlink_to("f")
    entry = await agent.client.stat(str(tmp_path / "f"))
    assert (entry.type, entry.size, entry.owner) == ("file", 5, pwd.getpwuid(os.geteuid()).pw_name)
    assert abs(entry.modified_at - (tmp_path / "f").stat().st_mtime) < 1e-3
    assert (await agent.client.stat(str(tmp_path))).type == "dir"
    link = await agent.client.stat(str(tmp_path / "l"))
    assert (link.type, link.symlink_target) == ("symlink", "f")
    with pytest.raises(FileNotFound):
        await agent.client.stat(str(tmp_path / "missing"))


async def test_move(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_bytes(b"data")
    entry = await agent.client.move(str(tmp_path / "src.txt"), str(tmp_path / "x/y/dst.txt"))
    assert entry.path == str(tmp_path / "x/y/dst.txt")
    assert not (tmp_path / "src.txt").exists()
    assert (tmp_path / "x/y/dst.txt").read_bytes() == b"data"
    with pytest.raises(FileNotFound):
        await agent.client.move(str(tmp_path / "src.txt"), str(tmp_path / "other"))
    with pytest.raises(InvalidPath):
        await agent.client.move("/", str(tmp_path / "root"))


async def test_mkdir_twice(agent: Agent, tmp_path: Path) -> None:
    created, entry = await agent.client.make_dir(str(tmp_path / "p/q/r"))
    assert created and entry.type == "dir" and (tmp_path / "p/q/r").is_dir()
    created, entry = await agent.client.make_dir(str(tmp_path / "p/q/r"))
    assert not created and entry.path == str(tmp_path / "p/q/r")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExists):
        await agent.client.make_dir(str(tmp_path / "file"))


async def test_remove(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    await agent.client.remove(str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()
    (tmp_path / "empty").mkdir()
    await agent.client.remove(str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()
    (tmp_path / "full" / "sub").mkdir(parents=True)
    (tmp_path / "full" / "sub" / "f").write_bytes(b"x")
    with pytest.raises(Conflict, match="recursive"):
        await agent.client.remove(str(tmp_path / "full"))
    assert (tmp_path / "full" / "sub" / "f").exists()
    await agent.client.remove(str(tmp_path / "full"), recursive=True)
    assert not (tmp_path / "full").exists()
    with pytest.raises(FileNotFound):
        await agent.client.remove(str(tmp_path / "full"))
    with pytest.raises(InvalidPath):
        await agent.client.remove("/", recursive=True)


async def test_relative_paths_start_at_the_users_home(agent: Agent) -> None:
    entry = await agent.client.write_file("rel.txt", chunks_of([b"r"]))
    assert entry.path == str(agent.home / "rel.txt")
    assert (await agent.client.stat("rel.txt")).path == entry.path
    assert await read_all(agent.client, "./sub/../rel.txt") == b"r"
    assert "rel.txt" in [e.name for e in await agent.client.list_dir(".")]
    created, _ = await agent.client.make_dir("made")
    assert created and (agent.home / "made").is_dir()
    await agent.client.move("rel.txt", "made/rel.txt")
    await agent.client.remove("made", recursive=True)
    assert not (agent.home / "made").exists()
    root_entry = await agent.client.write_file("mine.txt", chunks_of([b"r"]), user="root")
    assert root_entry.path == str(agent.homes / "root" / "mine.txt")


@needs_root
async def test_new_files_and_dirs_belong_to_the_user(agent: Agent, tmp_path: Path) -> None:
    entry = await agent.client.write_file(
        str(tmp_path / "n1" / "n2" / "f"), chunks_of([b"x"]), user="nobody"
    )
    assert entry.owner == "nobody"
    assert (tmp_path / "n1").owner() == (tmp_path / "n1" / "n2").owner() == "nobody"
    created, made = await agent.client.make_dir(str(tmp_path / "m"), user="nobody")
    assert created and made.owner == "nobody"


async def test_unknown_operation(agent: Agent) -> None:
    with pytest.raises(BadRequest, match="unknown operation"):
        await agent.client._call({"op": "teleport"})


# -- hostname ----------------------------------------------------------------------------


async def test_hostname_rewrites_hostname_and_its_hosts_line(agent: Agent) -> None:
    etc = agent.homes.parent / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "hostname").write_text("old\n")
    (etc / "hosts").write_text(
        "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n10.0.0.7 db  # mine"
    )
    os.chmod(etc / "hosts", 0o640)
    await agent.client.set_hostname("new-name")
    assert (etc / "hostname").read_text() == "new-name\n"
    assert (etc / "hosts").read_text() == (
        "127.0.0.1\tlocalhost\n127.0.1.1\tnew-name\n::1\tlocalhost\n10.0.0.7 db  # mine\n"
    )
    assert stat.S_IMODE((etc / "hosts").stat().st_mode) == 0o640
    assert sorted(p.name for p in etc.iterdir()) == ["hostname", "hosts"]
    for bad in ("", "a b", "-x", "x" * 65, "a\n127.0.0.1 evil", 7):
        with pytest.raises(BadRequest):
            await agent.client._call({"op": "hostname", "name": bad})
    assert (etc / "hostname").read_text() == "new-name\n"


def test_hosts_line_is_added_when_missing_and_duplicates_go() -> None:
    from sandbank.agent.system import hosts_with

    assert hosts_with("", "a") == "127.0.1.1\ta\n"
    assert hosts_with("127.0.0.1 localhost\n::1 x\n", "a") == (
        "127.0.0.1 localhost\n127.0.1.1\ta\n::1 x\n"
    )
    assert hosts_with("127.0.1.1 x\n# 127.0.1.1 kept\n127.0.1.1 y z\n", "b") == (
        "127.0.1.1\tb\n# 127.0.1.1 kept\n"
    )


async def test_socket_is_private(agent: Agent) -> None:
    mode = agent.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert (await agent.client.ping())["pid"] == agent.proc.pid


# -- lifecycle ---------------------------------------------------------------------------


@pytest.fixture
def long_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    yield directory


async def test_long_socket_path_stale_socket_and_clean_stop(long_dir: Path) -> None:
    sock_path = long_dir / "agent.sock"
    assert len(os.fsencode(sock_path)) > 107
    # A socket file left behind by an agent that died.
    fd = os.open(long_dir, os.O_PATH | os.O_DIRECTORY)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(f"/proc/self/fd/{fd}/agent.sock")
    stale.close()
    os.close(fd)
    async with running_agent(long_dir, sock_path) as running:
        result = await running.client.exec(ExecSpec(["echo", "far away"], timeout=10))
        assert result.stdout == b"far away\n"
        assert await read_all(running.client, str(long_dir / "agent.log")) is not None
        assert stop_agent(running.proc) == 0
    assert not sock_path.exists()
    assert b"listening on" in (long_dir / "agent.log").read_bytes()


async def test_agent_not_running(tmp_path: Path) -> None:
    client = AgentClient(tmp_path / "missing.sock")
    with pytest.raises(SandboxUnavailable):
        await client.ping()
    with pytest.raises(SandboxUnavailable):
        await client.stat("/")
    started = time.monotonic()
    with pytest.raises(SandboxUnavailable, match="did not answer"):
        await client.wait_ready(0.1)
    assert time.monotonic() - started < 2
    # A socket nobody listens on any more.
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(SandboxUnavailable):
        await AgentClient(tmp_path / "dead.sock").exec(ExecSpec(["true"]))
