"""``LinuxRuntime.customize``: new limits and a new name for a running sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from sandbank.errors import InvalidState, SandboxNotFound, SandboxUnavailable, ValidationFailed
from sandbank.runtime.linux.layout import SandboxRecord
from tests.contract.conftest import Harness

pytestmark = pytest.mark.linux

MIB = 1024 * 1024

#: What the sandbox sees of its own limits (the cgroup namespace makes it the root).
LIMITS = (
    "nproc; hostname; cat /etc/hostname; grep -c '^127.0.1.1' /etc/hosts; "
    "grep '^127.0.1.1' /etc/hosts | cut -f2; "
    "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes "
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"
)
LIMITS_V2 = (
    "nproc; hostname; cat /etc/hostname; grep -c '^127.0.1.1' /etc/hosts; "
    "grep '^127.0.1.1' /etc/hosts | cut -f2; "
    "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max; cut -d' ' -f1,2 /sys/fs/cgroup/cpu.max"
)

FORK = (
    "import os, time\n"
    "ok = fail = 0\n"
    "kids = []\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        fail += 1\n"
    "        continue\n"
    "    if pid == 0:\n"
    "        time.sleep(5); os._exit(0)\n"
    "    kids.append(pid); ok += 1\n"
    "print(ok, fail)\n"
    "for k in kids: os.kill(k, 9); os.waitpid(k, 0)\n"
)


async def seen_inside(harness: Harness, sid: str) -> list[str]:
    v2 = harness.rt.cgroups.version == 2
    return (await harness.out(sid, LIMITS_V2 if v2 else LIMITS)).split()


async def test_customize_changes_limits_and_name(harness: Harness) -> None:
    sid = await harness.create(vcpu=1.0, memory_mb=512, pids_limit=1024, hostname="first-name")
    try:
        cpus = len(harness.rt._cpus.cpus)
        before = await seen_inside(harness, sid)
        assert before[:5] == ["1", "first-name", "first-name", "1", "first-name"]
        assert before[5:7] == ["1024", str(512 * MIB)]
        assert before[7:] == ["100000", "100000"]
        # Something of the user's in /etc/hosts survives the rename.
        await harness.out(sid, "echo '10.0.0.7 db.internal' >> /etc/hosts", user="root")

        await harness.rt.customize(
            harness.spec(id=sid, vcpu=2.0, memory_mb=1024, pids_limit=64, hostname="second")
        )
        after = await seen_inside(harness, sid)
        assert after[:5] == [str(min(2, cpus)), "second", "second", "1", "second"]
        assert after[5:7] == ["64", str(1024 * MIB)]
        assert after[7:] == ["200000", "100000"]
        assert "10.0.0.7 db.internal" in await harness.out(sid, "cat /etc/hosts")
        assert await harness.out(sid, "stat -c '%U %a' /etc/hosts /etc/hostname") == (
            "root 644\nroot 644"
        )
        if harness.rt.cgroups.version == 1:
            memsw = harness.rt.cgroup(sid).file(  # type: ignore[union-attr]
                "memory", "memory.memsw.limit_in_bytes"
            )
            if memsw.exists():
                assert int(memsw.read_text()) == 1024 * MIB

        # The new pids limit holds inside.
        ok, fail = map(int, (await harness.out(sid, f"python3 -c '{FORK}'")).split())
        assert fail > 0 and ok < 64, (ok, fail)

        record = json.loads((harness.rt.sandboxes_dir / sid / "runtime.json").read_text())
        assert (record["vcpu"], record["memory_mb"], record["pids_limit"]) == (2.0, 1024, 64)
        assert record["hostname"] == "second"
        usage = await harness.rt.usage(sid)
        assert (usage.memory_limit_bytes, usage.pids_limit) == (1024 * MIB, 64)

        # And back down, below the first numbers.
        await harness.rt.customize(
            harness.spec(id=sid, vcpu=0.5, memory_mb=256, pids_limit=100, hostname="second")
        )
        again = await seen_inside(harness, sid)
        assert again[:2] == ["1", "second"]
        assert again[5:8] == ["100", str(256 * MIB), "50000"]
    finally:
        await harness.rt.destroy(sid)
    assert await harness.rt.leftovers(sid) == []


async def test_memory_below_current_use_is_refused(harness: Harness) -> None:
    sid = await harness.create(memory_mb=512)
    try:
        await harness.out(
            sid,
            "nohup python3 -c 'import time; b = bytearray(200 * 2**20); time.sleep(600)' "
            ">/dev/null 2>&1 &",
        )
        cg = harness.rt.cgroup(sid)
        assert cg is not None
        for _ in range(200):
            if cg.memory_current() > 200 * MIB:
                break
            await asyncio.sleep(0.05)
        used = cg.memory_current()
        assert used > 200 * MIB
        with pytest.raises(InvalidState) as caught:
            await harness.rt.customize(harness.spec(id=sid, memory_mb=128, hostname="other"))
        assert caught.value.details["memory_limit_bytes"] == 128 * MIB
        assert caught.value.details["memory_bytes"] >= 200 * MIB
        assert str(128 * MIB) in caught.value.message
        # Nothing was changed: not the limits, not the name, not the record.
        assert cg.memory_limit() == 512 * MIB
        assert await harness.out(sid, "hostname") == f"box-{sid[:6]}"
        record = SandboxRecord.load(harness.rt.sandboxes_dir / sid / "runtime.json")
        assert record is not None and record.memory_mb == 512
        # Above the use it is fine.
        await harness.rt.customize(harness.spec(id=sid, memory_mb=400))
        assert cg.memory_limit() == 400 * MIB
    finally:
        await harness.rt.destroy(sid)


async def test_customize_to_what_it_has_rewrites_nothing(harness: Harness) -> None:
    """A pool member handed out with its own limits and name: no cgroup write, no
    new runtime.json (the common hand-out, kept cheap)."""
    spec = harness.spec(vcpu=1.0, memory_mb=512, pids_limit=1024, hostname="same-name")
    sid = await harness.create(vcpu=1.0, memory_mb=512, pids_limit=1024, hostname="same-name")
    try:
        path = harness.rt.sandboxes_dir / sid / "runtime.json"
        before, inode = await seen_inside(harness, sid), path.stat().st_ino
        await harness.rt.customize(dataclasses.replace(spec, id=sid))
        assert path.stat().st_ino == inode
        assert await seen_inside(harness, sid) == before
        # Any one number differing is written, and recorded.
        await harness.rt.customize(dataclasses.replace(spec, id=sid, pids_limit=512))
        assert path.stat().st_ino != inode
        assert (await seen_inside(harness, sid))[5] == "512"
        assert json.loads(path.read_text())["pids_limit"] == 512
    finally:
        await harness.rt.destroy(sid)
    assert await harness.rt.leftovers(sid) == []


async def test_customize_errors(harness: Harness) -> None:
    with pytest.raises(SandboxNotFound):
        await harness.rt.customize(harness.spec(id="not-there"))
    sid = await harness.create()
    try:
        with pytest.raises(ValidationFailed):
            await harness.rt.customize(harness.spec(id=sid, hostname="bad name"))
        with pytest.raises(InvalidState, match="disk"):
            await harness.rt.customize(harness.spec(id=sid, disk_gb=2))
        # The agent is gone but the sandbox's pieces are still there.
        await harness.rt.ocicli.kill_all(sid)
        await harness.rt.ocicli.delete(sid)
        with pytest.raises(SandboxUnavailable):
            await harness.rt.customize(harness.spec(id=sid))
    finally:
        await harness.rt.destroy(sid)
    with pytest.raises(SandboxNotFound):
        await harness.rt.customize(harness.spec(id=sid))
