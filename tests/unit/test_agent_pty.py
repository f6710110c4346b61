"""Terminals of the real agent (run on the host as in test_agent): ``start`` with
``pty``, input through ``stdin``, ``resize``, ``signal`` to the whole session and
the replay ring, through ``AgentClient``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.agent import ptys
from sandbank.errors import BadRequest, Conflict, FileNotFound
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import JobSpec
from tests.unit.test_agent import SRC, stop_agent, wait_gone


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AgentClient]:
    root = tmp_path_factory.mktemp("pty-agent")
    (root / "home" / "user").mkdir(parents=True)
    socket = root / "run" / "agent.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(SRC),
        "SANDBANK_AGENT_HOME_ROOT": str(root / "home"),
        "SANDBANK_AGENT_JOBS_DIR": str(root / "jobs"),
    }
    with (root / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "sandbank.agent", "--socket", str(socket)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await AgentClient(socket).wait_ready(10)
        yield AgentClient(socket)
    finally:
        # Nothing a test started may outlive it.
        leftovers = [job.pid for job in await AgentClient(socket).jobs() if job.running]
        for pid in leftovers:
            await AgentClient(socket).signal(pid, "KILL")
            await AgentClient(socket).wait(pid, 5)
        stop_agent(proc)
        assert not leftovers, f"terminals left running: {leftovers}"


def shell(**options: object) -> JobSpec:
    # --norc/--noprofile: the host's rc files must not decide what a test sees.
    return JobSpec(cmd=["bash", "--norc", "--noprofile", "-i"], pty=(80, 24), **options)  # type: ignore[arg-type]


async def read_until(client: AgentClient, pid: int, needle: bytes, timeout: float = 10) -> bytes:
    """Everything the terminal showed from the start, once it holds ``needle``."""
    seen = b""

    async def collect() -> None:
        nonlocal seen
        async for event in client.attach(pid):
            seen += event.data
            if needle in seen:
                return

    await asyncio.wait_for(collect(), timeout)
    return seen


async def test_a_shell_on_a_terminal_echoes_sizes_and_resizes(client: AgentClient) -> None:
    job = await client.start(shell())
    assert job.running and job.pty == (80, 24) and job.stdin == "pty"
    await client.send_stdin(job.pid, b"tty; stty size\n")
    out = await read_until(client, job.pid, b"24 80")
    assert b"/dev/pts/" in out
    await client.resize(job.pid, 120, 40)
    await client.send_stdin(job.pid, b"stty size; exit 3\n")
    out = await read_until(client, job.pid, b"40 120")
    done = await client.wait(job.pid, 10)
    assert done.exit_code == 3 and done.pty == (120, 40)


async def test_ctrl_c_interrupts_the_foreground_job_not_the_shell(client: AgentClient) -> None:
    job = await client.start(shell())
    await client.send_stdin(job.pid, b"sleep 100\n")
    await asyncio.sleep(0.3)
    await client.send_stdin(job.pid, b"\x03")
    await client.send_stdin(job.pid, b"echo after-$?\n")
    await read_until(client, job.pid, b"after-130")
    await client.send_stdin(job.pid, b"exit\n")
    assert (await client.wait(job.pid, 10)).exit_code == 0


async def test_kill_takes_the_whole_session_along(client: AgentClient, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    job = await client.start(shell())
    # A job of the shell's own runs in a process group of its own.
    await client.send_stdin(job.pid, f"sleep 100 & echo $! > {pids}; echo st''arted\n".encode())
    await read_until(client, job.pid, b"started\r\n")
    background = int(pids.read_text())
    assert os.getpgid(background) != job.pid
    await client.signal(job.pid, "KILL")
    done = await client.wait(job.pid, 10)
    assert done.signal == 9 and done.exit_code == 137
    assert await wait_gone([background])
    with pytest.raises(Conflict) as exc:
        await client.send_stdin(job.pid, b"x")
    assert exc.value.details["exit_code"] == 137
    with pytest.raises(Conflict) as exc:
        await client.resize(job.pid, 10, 10)
    assert exc.value.details["exit_code"] == 137


async def test_replay_keeps_the_tail_and_says_what_it_dropped(client: AgentClient) -> None:
    size = ptys.RING_BYTES + 100_000
    job = await client.start(
        JobSpec(cmd=["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' a; echo; echo END"],
                pty=(80, 24))
    )  # fmt: skip
    await client.wait(job.pid, 10)
    events = [event async for event in client.attach(job.pid)]
    assert events[0].kind == "truncated" and events[0].offset > 0
    data = b"".join(e.data for e in events if e.kind == "stdout")
    assert data.endswith(b"END\r\n") and len(data) <= ptys.RING_BYTES
    assert events[-1].kind == "exit" and events[-1].offset == events[0].offset + len(data)
    # From an offset inside the ring: exactly the bytes from there.
    tail = [e async for e in client.attach(job.pid, offset=events[-1].offset - 5)]
    assert b"".join(e.data for e in tail if e.kind == "stdout") == b"END\r\n"


async def test_bad_input(client: AgentClient) -> None:
    with pytest.raises(BadRequest, match="cols"):
        await client.start(JobSpec(cmd=["sh"], pty=(0, 24)))
    with pytest.raises(FileNotFound, match="does not exist"):
        await client.start(JobSpec(cmd=["sh"], cwd="/no/such/dir", pty=(80, 24)))
    piped = await client.start(JobSpec(cmd=["sleep", "5"]))
    with pytest.raises(Conflict, match="no terminal"):
        await client.resize(piped.pid, 80, 24)
    await client.signal(piped.pid, "KILL")
    await client.wait(piped.pid, 5)
    job = await client.start(shell())
    with pytest.raises(BadRequest, match="rows"):
        await client.resize(job.pid, 80, 0)
    await client.signal(job.pid, "KILL")
    await client.wait(job.pid, 5)


async def test_the_default_command_is_a_login_shell(client: AgentClient) -> None:
    job = await client.start(JobSpec(cmd=[], pty=(80, 24), env={"PS1": "$ "}))
    assert job.cmd[-1] == "-l"
    await client.send_stdin(job.pid, b"shopt -q login_shell && echo LOGIN-$TERM\n")
    await read_until(client, job.pid, b"LOGIN-xterm-256color")
    await client.signal(job.pid, "HUP")
    await client.wait(job.pid, 10)


async def test_a_timeout_kills_the_session(client: AgentClient) -> None:
    job = await client.start(JobSpec(cmd=["sh", "-c", "sleep 100"], pty=(80, 24), timeout=0.3))
    done = await client.wait(job.pid, 10)
    assert done.timed_out and done.exit_code == 137 and done.signal == 9


async def test_at_most_so_many_terminals_run_at_once(client: AgentClient) -> None:
    from sandbank.errors import QuotaExceeded

    started = [
        await client.start(JobSpec(cmd=["sleep", "30"], pty=(80, 24)))
        for _ in range(ptys.MAX_RUNNING)
    ]
    try:
        with pytest.raises(QuotaExceeded) as exc:
            await client.start(JobSpec(cmd=["sleep", "30"], pty=(80, 24)))
        assert exc.value.details["limit"] == ptys.MAX_RUNNING
        # Pipe jobs do not count, and an ended terminal frees its place.
        piped = await client.start(JobSpec(cmd=["true"]))
        await client.wait(piped.pid, 5)
        await client.signal(started[0].pid, "KILL")
        await client.wait(started[0].pid, 5)
        extra = await client.start(JobSpec(cmd=["sleep", "30"], pty=(80, 24)))
        started.append(extra)
    finally:
        for job in started:
            with contextlib.suppress(Conflict):
                await client.signal(job.pid, "KILL")
            await client.wait(job.pid, 5)
