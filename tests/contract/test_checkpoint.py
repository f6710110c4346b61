"""Hibernate, wake and fork on the real Linux runtime (runc + CRIU)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.errors import CheckpointFailed, SandboxUnavailable
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import JobSpec
from sandbank.runtime.linux import checkpoint
from tests.contract.conftest import Harness
from tests.support import holder as holder_sh

pytestmark = pytest.mark.linux

TICKER = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"


@pytest.fixture(scope="module", autouse=True)
def needs_criu(harness: Harness) -> None:
    problem = harness.rt.checkpoint_problem()
    if problem is not None:
        pytest.skip(f"no working criu: {problem}")


async def _report(h: Harness, sid: str) -> tuple[int, int]:
    secret, count = (await h.out(sid, holder_sh.ASK)).split()
    return int(secret), int(count)


async def _start_holder(h: Harness, sid: str) -> None:
    await h.out(sid, holder_sh.START)


async def _output(h: Harness, sid: str, pid: int) -> bytes:
    data = b""
    async for event in h.rt.channel(sid).attach(pid, follow=False):
        data += event.data
    return data


@pytest.fixture
async def holder(harness: Harness) -> AsyncIterator[str]:
    sid = await harness.create()
    await _start_holder(harness, sid)
    yield sid
    await harness.rt.destroy(sid)


async def test_hibernate_and_wake_keep_memory_jobs_and_files(harness: Harness, holder: str) -> None:
    h, rt = harness, harness.rt
    await h.out(holder, "echo before > /home/user/note.txt")
    job = await rt.channel(holder).start(JobSpec(cmd=["/bin/bash", "-c", TICKER]))
    await asyncio.sleep(0.3)
    secret, count = await _report(h, holder)
    ticks_before = (await _output(h, holder, job.pid)).count(b"tick")

    image = await rt.checkpoint(holder)
    assert not await rt.is_alive(holder)
    assert rt.hibernated_image(holder) == image
    cgroup = rt.cgroup(holder)
    assert cgroup is not None and not cgroup.existing(), "no cgroup (so no memory) while hibernated"
    assert sorted(os.listdir(image))  # the images are on disk

    await rt.restore_checkpoint(holder, image)
    assert rt.hibernated_image(holder) is None and not Path(image).exists()
    secret_after, count_after = await _report(h, holder)
    assert secret_after == secret, "the value held only in memory survived"
    assert count_after >= count
    await asyncio.sleep(0.3)
    assert (await _report(h, holder))[1] > count_after, "and it keeps counting"
    assert await h.out(holder, "cat /home/user/note.txt") == "before"
    ticks_after = (await _output(h, holder, job.pid)).count(b"tick")
    assert ticks_after > ticks_before, "the background job's output goes on"
    jobs = {j.pid: j for j in await rt.channel(holder).jobs()}
    assert jobs[job.pid].running
    # The network is back, with a link of its own.
    assert "inet 10." in await h.out(holder, "ip -4 -o addr show eth0")


async def test_failed_checkpoint_leaves_the_sandbox_running(harness: Harness, holder: str) -> None:
    """An open stream to the agent (a host-side socket) cannot be saved: the
    checkpoint fails and the sandbox goes on as it was."""
    h, rt = harness, harness.rt
    job = await rt.channel(holder).start(JobSpec(cmd=["/bin/bash", "-c", TICKER]))
    secret, _ = await _report(h, holder)
    stream = rt.channel(holder).attach(job.pid, follow=True)
    first = await anext(stream)
    assert first.kind == "stdout"
    with pytest.raises(CheckpointFailed, match="keeps running"):
        await rt.checkpoint(holder)
    await stream.aclose()
    assert await rt.is_alive(holder)
    assert rt.hibernated_image(holder) is None
    assert (await _report(h, holder))[0] == secret
    assert await h.out(holder, "echo still here") == "still here"
    # And a checkpoint works once the stream is closed.
    await rt.restore_checkpoint(holder, await rt.checkpoint(holder))
    assert (await _report(h, holder))[0] == secret


@pytest.mark.parametrize("named", [True, False], ids=["copies-named", "copies-unnamed"])
async def test_fork_into_two(harness: Harness, holder: str, named: bool) -> None:
    """Named at the checkpoint, the copies' dirs are made during the dump."""
    h, rt = harness, harness.rt
    secret, _ = await _report(h, holder)
    # Written just before: still in the page cache, not yet on the disk image.
    await h.out(holder, "head -c 3000000 /dev/urandom > ~/blob && sha256sum ~/blob > ~/blob.sum")
    copies = [f"{holder}k{n}" for n in range(2)]
    h.ids.update(copies)
    image = await rt.checkpoint(holder, leave_running=True, copies=copies if named else ())
    try:
        for copy in copies:
            await rt.restore_checkpoint(copy, image)
        await rt.discard_checkpoint(image)
        assert not Path(image).exists()
        assert await rt.is_alive(holder), "the source keeps running"
        addresses = set()
        for sid in (holder, *copies):
            assert (await _report(h, sid))[0] == secret
            assert await h.out(sid, "sha256sum -c --quiet ~/blob.sum && echo same") == "same"
            addresses.add(await h.out(sid, "ip -4 -o addr show eth0 | awk '{print $4}'"))
        assert len(addresses) == 3, addresses
        await h.out(copies[0], "echo mine > /home/user/only-in-0.txt")
        assert await h.out(copies[0], "cat /home/user/only-in-0.txt") == "mine"
        for sid in (holder, copies[1]):
            assert await h.out(sid, "test -e /home/user/only-in-0.txt || echo absent") == "absent"
    finally:
        for copy in copies:
            await rt.destroy(copy)
    for copy in copies:
        assert await rt.leftovers(copy) == []


async def test_failed_fork_leaves_none_of_its_copies(harness: Harness, holder: str) -> None:
    h, rt = harness, harness.rt
    job = await rt.channel(holder).start(JobSpec(cmd=["/bin/bash", "-c", TICKER]))
    stream = rt.channel(holder).attach(job.pid, follow=True)
    assert (await anext(stream)).kind == "stdout"
    copies = [f"{holder}f{n}" for n in range(2)]
    h.ids.update(copies)
    with pytest.raises(CheckpointFailed, match="keeps running"):
        await rt.checkpoint(holder, leave_running=True, copies=copies)
    await stream.aclose()
    for copy in copies:
        assert await rt.leftovers(copy) == []
        assert not (rt.sandboxes_dir / copy).exists()
    assert await h.out(holder, "echo still here") == "still here"


async def test_tcp_listener_survives_and_established_connection_refuses(
    harness: Harness, holder: str
) -> None:
    """A listening socket comes back with the sandbox; an established TCP
    connection is a state a checkpoint does not save: it fails, and the
    sandbox runs on."""
    h, rt = harness, harness.rt
    await h.out(
        holder,
        "cd /tmp && nohup python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 & "
        "for i in $(seq 200); do curl -fs localhost:8000/ >/dev/null && break; sleep 0.02; done",
    )
    await rt.restore_checkpoint(holder, await rt.checkpoint(holder))
    assert "holder.py" in await h.out(holder, "curl -fs localhost:8000/")
    # A connection held open inside the sandbox.
    await h.out(
        holder,
        "nohup python3 -c 'import socket,time\n"
        's=socket.create_connection(("127.0.0.1", 8000))\n'
        'open("/tmp/connected","w").close()\n'
        "time.sleep(600)' >/dev/null 2>&1 &"
        " for i in $(seq 200); do test -e /tmp/connected && break; sleep 0.02; done",
    )
    with pytest.raises(CheckpointFailed, match="TCP"):
        await rt.checkpoint(holder)
    assert await rt.is_alive(holder) and rt.hibernated_image(holder) is None
    assert "holder.py" in await h.out(holder, "curl -fs localhost:8000/")


async def test_recover_after_a_crash_mid_checkpoint(harness: Harness, holder: str) -> None:
    """A server that died between parking the agent and handing it a socket
    back leaves the sandbox frozen and deaf; the next start recovers it."""
    h, rt = harness, harness.rt
    secret, _ = await _report(h, holder)
    box = rt._box(holder)
    parked = await AgentClient(box.socket).park()
    checkpoint.mark_parked(box, int(parked["wake_fd"]))
    cgroup = rt.cgroup(holder)
    assert cgroup is not None and await cgroup.freeze_wait()
    with pytest.raises(SandboxUnavailable):
        await AgentClient(box.socket).ping()
    assert await rt.recover_checkpoint(holder) == "running"
    assert await rt.adopt(holder)
    assert (await _report(h, holder))[0] == secret
    # Hibernated, it stays hibernated.
    image = await rt.checkpoint(holder)
    assert await rt.recover_checkpoint(holder) == "hibernated"
    await rt.restore_checkpoint(holder, image)
    assert (await _report(h, holder))[0] == secret


async def test_restored_sandboxes_keep_their_current_limits(harness: Harness) -> None:
    """Limits changed after the start (a pool hand-out, a resize) are not in the
    bundle runc restores from; they must still hold after a wake and in a fork."""
    rt = harness.rt
    spec = harness.spec(memory_mb=512, vcpu=1.0)
    harness.ids.add(spec.id)
    await rt.create(spec)
    copy = f"{spec.id}k"
    harness.ids.add(copy)
    try:
        await rt.customize(dataclasses.replace(spec, memory_mb=768, vcpu=2.0))
        await rt.restore_checkpoint(spec.id, await rt.checkpoint(spec.id))
        assert (await rt.usage(spec.id)).memory_limit_bytes == 768 * 2**20
        image = await rt.checkpoint(spec.id, leave_running=True)
        await rt.restore_checkpoint(copy, image)
        await rt.discard_checkpoint(image)
        assert (await rt.usage(copy)).memory_limit_bytes == 768 * 2**20
        assert await harness.out(copy, "nproc") == await harness.out(spec.id, "nproc")
    finally:
        await rt.destroy(copy)
        await rt.destroy(spec.id)
