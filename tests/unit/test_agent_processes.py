"""Background processes of the real agent (run on the host as in test_agent):
``start``, ``jobs``, ``attach``, ``wait``, ``stdin`` and ``signal`` through
``AgentClient``, and their output outliving every client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.errors import BadRequest, Conflict, NotFound, Timeout
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import JobInfo, JobSpec, OutputEvent
from tests.unit.test_agent import SRC, read_pids, stop_agent, wait_gone


class Agent:
    def __init__(self, socket: Path, jobs_dir: Path) -> None:
        self.socket = socket
        self.jobs_dir = jobs_dir

    def client(self) -> AgentClient:
        """A new client: what a restarted server would make."""
        return AgentClient(self.socket)


@pytest.fixture(scope="module")
async def agent(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Agent]:
    root = tmp_path_factory.mktemp("jobs-agent")
    homes = root / "home"
    (homes / "user").mkdir(parents=True)
    socket = root / "run" / "agent.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(SRC),
        "SANDBANK_AGENT_HOME_ROOT": str(homes),
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
        yield Agent(socket, root / "jobs")
    finally:
        stop_agent(proc)


@pytest.fixture(autouse=True)
async def cleanup(agent: Agent) -> AsyncIterator[None]:
    """Every test leaves no process of its own running."""
    yield
    client = agent.client()
    for job in await client.jobs():
        if job.running:
            await client.signal(job.pid, "KILL")
            await client.wait(job.pid, 5)


def sh(script: str, **options: object) -> JobSpec:
    return JobSpec(cmd=["/bin/sh", "-c", script], **options)  # type: ignore[arg-type]


async def collect(client: AgentClient, pid: int, **options: object) -> list[OutputEvent]:
    return [event async for event in client.attach(pid, **options)]  # type: ignore[arg-type]


def text(events: list[OutputEvent], kind: str = "stdout") -> bytes:
    return b"".join(event.data for event in events if event.kind == kind)


async def test_start_answers_at_once_and_attach_streams_live_in_order(agent: Agent) -> None:
    client = agent.client()
    script = "for i in 1 2 3; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done"
    began = time.monotonic()
    job = await client.start(sh(script, tag="loop"))
    assert time.monotonic() - began < 0.2
    assert job.running and job.tag == "loop" and job.pid > 0
    events = await collect(client, job.pid)
    lines = [e.data.decode().strip() for e in events if e.kind in ("stdout", "stderr")]
    assert lines == ["out1", "err1", "out2", "err2", "out3", "err3"]
    offsets = [e.offset for e in events if e.kind in ("stdout", "stderr")]
    assert offsets == sorted(offsets) and offsets[0] == 0
    end = events[-1]
    assert end.kind == "exit" and end.info is not None
    assert end.info.exit_code == 0 and not end.info.running and end.info.signal is None


async def test_a_new_client_replays_from_zero_and_from_an_offset(agent: Agent) -> None:
    job = await agent.client().start(
        sh("printf abcdef; sleep 0.05; printf XYZ >&2; sleep 0.05; printf gh")
    )
    await agent.client().wait(job.pid, 5)
    events = await collect(agent.client(), job.pid)
    assert text(events) == b"abcdefgh" and text(events, "stderr") == b"XYZ"
    assert events[-1].kind == "exit"
    tail = await collect(agent.client(), job.pid, offset=4)
    assert b"".join(e.data for e in tail) == b"efXYZgh"
    assert tail[0].offset == 4


async def test_two_attaches_at_once_and_leaving_early(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("for i in $(seq 20); do echo line$i; sleep 0.01; done; exit 4"))

    async def first_event_only() -> None:
        async for _ in client.attach(job.pid):
            break  # hanging up must not touch the process

    await first_event_only()
    one, two = await asyncio.gather(collect(client, job.pid), collect(agent.client(), job.pid))
    expected = b"".join(f"line{i}\n".encode() for i in range(1, 21))
    assert text(one) == text(two) == expected
    assert one[-1].info is not None and one[-1].info.exit_code == 4
    assert two[-1].info is not None and two[-1].info.exit_code == 4


async def test_wait_returns_the_exit_and_times_out(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("sleep 0.2; exit 3"))
    with pytest.raises(Timeout):
        await client.wait(job.pid, 0.05)
    done = await client.wait(job.pid, 5)
    assert done.exit_code == 3 and not done.running and done.ended_at is not None


async def test_open_stdin_is_fed_then_closed(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(JobSpec(cmd=["cat"], stdin="open"))
    assert job.stdin == "open"
    await client.send_stdin(job.pid, b"hello ")
    await agent.client().send_stdin(job.pid, b"world\n", close=True)
    done = await client.wait(job.pid, 5)
    assert done.exit_code == 0 and done.stdin == "closed"
    assert text(await collect(client, job.pid)) == b"hello world\n"


async def test_stdin_up_front_and_stdin_conflicts(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(JobSpec(cmd=["cat"], stdin="bytes", stdin_data=b"given"))
    await client.wait(job.pid, 5)
    assert text(await collect(client, job.pid)) == b"given"
    sleeper = await client.start(JobSpec(cmd=["sleep", "30"]))
    with pytest.raises(Conflict, match="not opened"):
        await client.send_stdin(sleeper.pid, b"x")
    fed = await client.start(JobSpec(cmd=["sleep", "30"], stdin="open"))
    await client.send_stdin(fed.pid, b"", close=True)
    with pytest.raises(Conflict, match="closed"):
        await client.send_stdin(fed.pid, b"x")


async def test_sigterm_kills_the_whole_group(agent: Agent, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    client = agent.client()
    job = await client.start(
        sh(f"sleep 60 & echo $! >> {pids_file}; sleep 60 & echo $! >> {pids_file}; wait")
    )
    grandchildren = await read_pids(pids_file, 2)
    await client.signal(job.pid, "SIGTERM")
    done = await client.wait(job.pid, 5)
    assert done.signal == signal.SIGTERM and done.exit_code == 128 + signal.SIGTERM
    assert await wait_gone(grandchildren)


async def test_unknown_pid_is_404_and_an_ended_one_409(agent: Agent) -> None:
    client = agent.client()
    for call in (
        client.wait(999_999, 1),
        client.send_stdin(999_999, b"x"),
        client.signal(999_999, 15),
        collect(client, 999_999),
    ):
        with pytest.raises(NotFound, match="999999"):
            await call
    job = await client.start(sh("exit 7", stdin="open"))
    await client.wait(job.pid, 5)
    with pytest.raises(Conflict, match="code 7") as raised:
        await client.signal(job.pid, 9)
    assert raised.value.details["exit_code"] == 7
    with pytest.raises(Conflict, match="code 7"):
        await client.send_stdin(job.pid, b"late")
    with pytest.raises(BadRequest, match="signal"):
        await client.signal(job.pid, "NOPE")


async def test_output_past_the_cap_is_dropped_with_a_marker(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("head -c 100000 /dev/zero; echo tail >&2", max_output=1000))
    done = await client.wait(job.pid, 5)
    assert done.truncated == ["stdout"] and done.output_bytes == 1005
    events = await collect(client, job.pid)
    assert len(text(events)) == 1000 and text(events, "stderr") == b"tail\n"
    markers = [e for e in events if e.kind == "truncated"]
    assert [(m.stream, m.offset) for m in markers] == [("stdout", 1000)]
    assert os.path.getsize(agent.jobs_dir / str(job.pid) / "output") < 1100


async def test_jobs_lists_running_and_ended(agent: Agent) -> None:
    client = agent.client()
    running = await client.start(
        JobSpec(cmd=["sleep", "30"], env={"FOO": "1"}, tag="sleeper", cwd="/")
    )
    ended = await client.start(JobSpec(cmd=["true"]))
    await client.wait(ended.pid, 5)
    listed: dict[int, JobInfo] = {job.pid: job for job in await agent.client().jobs()}
    assert listed[running.pid].running and listed[running.pid].tag == "sleeper"
    assert listed[running.pid].cmd == ["sleep", "30"] and listed[running.pid].cwd == "/"
    assert "FOO" in listed[running.pid].env_keys and "PATH" in listed[running.pid].env_keys
    assert listed[running.pid].user == "user"
    assert not listed[ended.pid].running and listed[ended.pid].exit_code == 0


async def test_output_and_exit_outlive_every_client(agent: Agent) -> None:
    first = agent.client()
    job = await first.start(sh("echo before; read x; echo after $x; exit 5", stdin="open"))
    seen = await collect(first, job.pid, follow=False)
    while b"before" not in text(seen):
        await asyncio.sleep(0.01)
        seen = await collect(first, job.pid, follow=False)
    assert all(e.kind != "exit" for e in seen)
    del first  # the server restarts: nothing of the old clients is left
    await agent.client().send_stdin(job.pid, b"go\n", close=True)
    events = await collect(agent.client(), job.pid)
    assert text(events) == b"before\nafter go\n"
    assert events[-1].info is not None and events[-1].info.exit_code == 5
    [listed] = [j for j in await agent.client().jobs() if j.pid == job.pid]
    assert listed.exit_code == 5
    meta = (agent.jobs_dir / str(job.pid) / "meta.json").read_text()
    assert '"exit_code":5' in meta


async def test_timeout_kills_the_group(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("sleep 30", timeout=0.3))
    done = await client.wait(job.pid, 5)
    assert done.timed_out and done.signal == signal.SIGKILL


async def test_a_command_that_cannot_run(agent: Agent) -> None:
    with pytest.raises(BadRequest, match="cannot run") as raised:
        await agent.client().start(JobSpec(cmd=["/no/such/program"]))
    assert raised.value.details["exit_code"] == 127


async def test_the_fake_channel_keeps_the_same_contract() -> None:
    from sandbank.runtime.base import SandboxSpec
    from sandbank.runtime.fake import FakeChannel, FakeSandbox

    box = FakeSandbox(SandboxSpec("sb", "base", 1, 256, 1, "sb"))
    job = await FakeChannel(box).start(JobSpec(cmd=["cat"], stdin="open", tag="t"))
    await FakeChannel(box).send_stdin(job.pid, b"abc", close=True)
    events = [e async for e in FakeChannel(box).attach(job.pid, offset=1)]
    assert events[0].data == b"bc" and events[-1].info is not None
    assert events[-1].info.exit_code == 0
    with pytest.raises(Conflict):
        await FakeChannel(box).signal(job.pid, "TERM")
    with pytest.raises(NotFound):
        await FakeChannel(box).wait(job.pid + 1)


def test_ended_processes_are_pruned_after_the_retention(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sandbank.agent import jobs

    assert jobs.RETAIN_SECONDS >= 600  # exit codes are promised for 10 minutes
    (tmp_path / "123").mkdir()  # left by an earlier agent
    registry = jobs.Registry(str(tmp_path))
    assert not (tmp_path / "123").exists()
    now = time.time()
    for pid, ended in ((1, now - jobs.RETAIN_SECONDS - 1), (2, now - 5), (3, None)):
        (tmp_path / str(pid)).mkdir()
        record = SimpleNamespace(
            pid=pid,
            finished=ended is not None,
            ended_at=ended,
            directory=str(tmp_path / str(pid)),
            live=[],
        )
        registry._jobs[pid] = record  # type: ignore[assignment]
    registry.prune()
    assert sorted(registry._jobs) == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]


async def test_stdin_to_a_process_that_stops_reading_does_not_hang(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("sleep 0.3", stdin="open"))
    with pytest.raises(Conflict):
        await asyncio.wait_for(client.send_stdin(job.pid, b"x" * (1 << 20)), 5)
    assert (await client.wait(job.pid, 5)).exit_code == 0


async def test_small_writes_are_sent_as_few_frames_and_offsets_still_resume(
    agent: Agent,
) -> None:
    client = agent.client()
    job = await client.start(sh("i=0; while [ $i -lt 3000 ]; do echo l$i; i=$((i+1)); done"))
    await client.wait(job.pid, 10)
    expected = b"".join(f"l{i}\n".encode() for i in range(3000))
    events = await collect(client, job.pid)
    assert text(events) == expected
    assert len(events) < 100  # thousands of writes, merged
    for offset in (0, 7, 12345, len(expected) - 1):
        tail = await collect(client, job.pid, offset=offset)
        assert text(tail) == expected[offset:] and tail[0].offset == offset


async def test_live_readers_get_output_past_the_cap(agent: Agent) -> None:
    client = agent.client()
    job = await client.start(sh("sleep 0.3; head -c 100000 /dev/zero | tr '\\0' x", max_output=10))
    live = await collect(client, job.pid)
    assert text(live) == b"x" * 100000
    assert [e.stream for e in live if e.kind == "truncated"] == ["stdout"]
    replay = await collect(client, job.pid)
    assert text(replay) == b"x" * 10 and replay[-1].info is not None
    assert replay[-1].info.truncated == ["stdout"] and replay[-1].info.output_bytes == 10


async def test_run_is_foreground_and_dies_with_its_stream(agent: Agent) -> None:
    client = agent.client()
    spec = sh("head -c 3000000 /dev/zero | tr '\\0' y; echo done >&2", max_output=1000)
    events = [event async for event in client.run(spec)]
    assert events[0].kind == "start" and events[0].info is not None
    assert events[0].info.kind == "foreground"
    assert text(events) == b"y" * 3000000 and text(events, "stderr") == b"done\n"
    assert events[-1].kind == "exit" and events[-1].info is not None
    assert events[-1].info.exit_code == 0

    stream = client.run(
        sh("echo up; sleep 600", env={"SHOWN": "1", "HIDDEN": "2"}, show_env=("SHOWN",))
    )
    start = await anext(stream)
    assert start.info is not None and start.info.env == {"SHOWN": "1"}
    assert "HIDDEN" in start.info.env_keys
    assert (await anext(stream)).data == b"up\n"
    await stream.aclose()  # the server went away
    ended = await client.wait(start.info.pid, 5)
    assert ended.signal == signal.SIGKILL and ended.kind == "foreground"


async def test_a_foreground_reader_that_stops_reading_does_not_outlast_the_timeout(
    agent: Agent,
) -> None:
    client = agent.client()
    stream = client.run(sh("yes", timeout=1, max_output=10))
    start = await anext(stream)  # then read nothing: the process waits for us...
    assert start.info is not None
    try:
        ended = await agent.client().wait(start.info.pid, 10)  # ...until its timeout
        assert ended.timed_out and ended.signal == signal.SIGKILL
    finally:
        await stream.aclose()
