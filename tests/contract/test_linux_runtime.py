"""The Linux runtime against the Runtime contract, with real runc and the real agent."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.errors import InvalidState, RuntimeFailure, SandboxUnavailable, TemplateNotFound
from sandbank.runtime.base import ExecSpec
from sandbank.runtime.linux import oci
from sandbank.runtime.linux.driver import LinuxRuntime
from tests.contract.conftest import TEMPLATES, Harness, template_seed

pytestmark = pytest.mark.linux

GIB = 1024**3


@pytest.fixture(scope="module")
async def box(harness: Harness) -> AsyncIterator[str]:
    """One sandbox shared by the tests that only look."""
    sid = await harness.create(hostname="contract-box")
    yield sid
    await harness.rt.destroy(sid)


@pytest.fixture(scope="module")
async def tight(harness: Harness) -> AsyncIterator[str]:
    """A sandbox with small limits, shared by the tests that hit them."""
    sid = await harness.create(memory_mb=512, pids_limit=64, disk_gb=1)
    yield sid
    await harness.rt.destroy(sid)


# -- isolation ---------------------------------------------------------------------------


async def test_exec_runs_as_user_and_root(harness: Harness, box: str) -> None:
    assert await harness.out(box, "id -u") == "1000"
    assert await harness.out(box, "id -u", user="root") == "0"
    assert await harness.out(box, "echo $HOME; pwd") == "/home/user\n/home/user"


async def test_files_land_shifted_on_the_host(harness: Harness, box: str) -> None:
    await harness.out(box, "echo hi > /home/user/mine.txt")
    await harness.out(box, "echo hi > /rootfile", user="root")
    assert await harness.out(box, "stat -c %u:%g /rootfile /home/user/mine.txt") == (
        "0:0\n1000:1000"
    )
    upper = harness.rt.sandboxes_dir / box / "disk" / "upper"
    st = os.stat(upper / "rootfile")
    assert (st.st_uid, st.st_gid) == (oci.ID_SHIFT, oci.ID_SHIFT)
    st = os.stat(upper / "home/user/mine.txt")
    assert (st.st_uid, st.st_gid) == (oci.ID_SHIFT + 1000, oci.ID_SHIFT + 1000)


async def test_ps_sees_only_the_sandbox(harness: Harness, box: str) -> None:
    lines = (await harness.out(box, "ps -e -o pid=,args=")).splitlines()
    pids = {int(line.split()[0]): line.split(None, 1)[1] for line in lines}
    assert "sandbank.agent" in pids[1]
    assert len(pids) < 10, pids
    assert not any("pytest" in args for args in pids.values())


async def test_hostname_loopback_and_one_link(harness: Harness, box: str) -> None:
    assert await harness.out(box, "hostname") == "contract-box"
    links = (await harness.out(box, "ip -o link")).splitlines()
    # eth0 is the sandbox's end of its veth pair (see test_network.py).
    assert [line.split(":")[1].strip().split("@")[0] for line in links] == ["lo", "eth0"]
    assert "state UNKNOWN" in links[0] or "UP" in links[0]


async def test_root_writes_etc_and_user_sudoes(harness: Harness, box: str) -> None:
    assert await harness.out(box, "echo x > /etc/sb-test && cat /etc/sb-test", user="root") == "x"
    assert (await harness.sh(box, "echo x > /etc/sb-test2")).exit_code != 0
    assert (await harness.sh(box, "sudo -n true")).exit_code == 0
    assert await harness.out(box, "sudo -n id -u") == "0"
    assert await harness.out(box, "sudo -n touch /etc/by-sudo && stat -c %u /etc/by-sudo") == "0"


async def test_host_paths_are_unreachable(harness: Harness, box: str) -> None:
    secret = secrets.token_hex(16)
    marker = harness.rt.data_dir.parent / f"marker-{secret[:8]}"
    marker.write_text(secret)
    try:
        attempts = [
            f"cat {marker}",
            f"cat /../../../../..{marker}",
            f"ln -sf {marker} /tmp/link && cat /tmp/link",
            f"ln -sf ../../../../../../../..{marker} /tmp/rel && cat /tmp/rel",
            f"cat /proc/1/root{marker}",
            f"cat /proc/1/root/../../..{marker}",
            f"ls {harness.rt.data_dir}",
        ]
        for script in attempts:
            result = await harness.sh(box, script, user="root")
            assert result.exit_code != 0, script
            assert secret.encode() not in result.stdout + result.stderr
        assert await harness.out(box, "readlink /proc/1/root", user="root") == "/"
    finally:
        marker.unlink()


async def test_sandbox_cannot_redirect_its_channel(harness: Harness, box: str) -> None:
    # The server connects to run/agent.sock on the host: a symlink there (to another
    # sandbox's socket, or a host service's) would send our requests elsewhere.
    other = "../../elsewhere/run/agent.sock"
    attempts = [
        f"ln -s {other} /run/sandbank/x",
        f"ln -sf {other} /run/sandbank/agent.sock",
        "rm -f /run/sandbank/agent.sock",
        "mv /run/sandbank/agent.sock /run/sandbank/moved",
        "chattr -i /run/sandbank",
    ]
    for script in attempts:
        assert (await harness.sh(box, script, user="root")).exit_code != 0, script
    assert await harness.out(box, "test -S /run/sandbank/agent.sock && hostname") == "contract-box"


async def test_security_settings(harness: Harness, box: str) -> None:
    status = await harness.out(box, "grep -E '^(Seccomp|CapBnd|NoNewPrivs):' /proc/self/status")
    fields = dict(line.split(":\t") for line in status.splitlines())
    assert fields["Seccomp"] == "2"
    assert fields["NoNewPrivs"] == "0"
    cap_sys_admin = 21
    assert not int(fields["CapBnd"], 16) & (1 << cap_sys_admin)
    as_root = {
        "unshare -U true": "user namespaces are denied",
        "mount -t tmpfs none /mnt": "no CAP_SYS_ADMIN",
        "touch /sys/kernel/x": "/sys is read-only",
        "mkdir /sys/fs/cgroup/memory/x": "the cgroup mount is read-only",
        "echo 1 > /proc/sysrq-trigger": "read-only /proc paths",
    }
    for script, why in as_root.items():
        assert (await harness.sh(box, script, user="root")).exit_code != 0, why
    rlimit = int(await harness.out(box, "ulimit -Hn"))
    assert 0 < rlimit <= 1024 * 1024


async def test_usage_numbers(harness: Harness, box: str) -> None:
    await harness.out(box, "head -c 20000000 /dev/urandom > /home/user/blob")
    first = await harness.rt.usage(box)
    assert 0 < first.memory_bytes < first.memory_limit_bytes == 512 * 1024 * 1024
    assert first.pids >= 1 and first.pids_limit == 1024
    assert 0.9 * GIB < first.disk_limit_bytes <= GIB
    assert 20_000_000 <= first.disk_bytes < first.disk_limit_bytes
    assert first.cpu_usage_seconds > 0 and first.cpu_percent >= 0
    # Spin for 0.4 s of CPU time, not of wall time: on a busy host the loop may
    # get only part of the CPU it asks for.
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    await harness.sh(box, f"python3 -c '{spin}'", timeout=30)
    second = await harness.rt.usage(box)
    assert second.cpu_usage_seconds >= first.cpu_usage_seconds + 0.35
    assert 0 < second.cpu_percent <= 100 * 1.1  # one vcpu, measured since the last sample


async def test_alive_running_adopt(harness: Harness, box: str) -> None:
    assert await harness.rt.is_alive(box)
    assert box in await harness.rt.running()
    assert await harness.rt.adopt(box)
    assert not await harness.rt.is_alive("no-such-box")
    assert not await harness.rt.adopt("no-such-box")
    # Detached: the sandbox is neither our child nor in our session.
    state = harness.rt.ocicli.saved_state(box) or {}
    init = int(state["init_process_pid"])
    stat = Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[1]) != os.getpid()
    assert int(stat[3]) != os.getsid(0)


# -- limits ------------------------------------------------------------------------------


async def test_memory_limit_kills_the_hog_only(harness: Harness, tight: str) -> None:
    hog = await harness.sh(tight, "python3 -c \"b = b'x' * (1024 ** 3); print(len(b))\"")
    assert hog.exit_code != 0
    assert b"1073741824" not in hog.stdout
    assert await harness.out(tight, "echo still here") == "still here"
    cgroup = harness.rt.cgroup(tight)
    assert cgroup is not None
    if harness.rt.cgroups.version == 1:
        oom = cgroup.file("memory", "memory.oom_control").read_text()
    else:
        oom = cgroup.file("memory", "memory.events").read_text()
    assert int(oom.split("oom_kill ")[1].split()[0]) >= 1


async def test_pids_limit(harness: Harness, tight: str) -> None:
    script = (
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
    out = await harness.out(tight, f"python3 -c '{script}'")
    ok, fail = map(int, out.split())
    assert fail > 0 and ok < 64, out
    assert await harness.out(tight, "echo fine") == "fine"


async def test_disk_limit_is_enospc_inside(harness: Harness, tight: str) -> None:
    fill = await harness.sh(tight, "dd if=/dev/zero of=/home/user/fill bs=1M count=1500")
    assert fill.exit_code != 0
    assert b"No space left on device" in fill.stderr
    await harness.out(tight, "rm /home/user/fill && echo small > /home/user/ok")
    assert (await harness.rt.usage(tight)).disk_bytes < 0.5 * GIB


# -- lifecycle ---------------------------------------------------------------------------


async def test_destroy_leaves_nothing_and_is_idempotent(harness: Harness) -> None:
    sid = await harness.create()
    assert await harness.out(sid, "echo up") == "up"
    await harness.rt.destroy(sid)
    assert await harness.rt.leftovers(sid) == []
    assert sid not in await harness.rt.running()
    await harness.rt.destroy(sid)
    await harness.rt.destroy("never-existed")


async def test_create_errors(harness: Harness, box: str) -> None:
    with pytest.raises(InvalidState):
        await harness.rt.create(harness.spec(id=box))
    with pytest.raises(TemplateNotFound, match="base"):
        await harness.rt.create(harness.spec(template="nope"))
    with pytest.raises(TemplateNotFound, match="available: base"):
        await harness.rt.ensure_template("nope")
    assert "base" in [t.name for t in await harness.rt.templates() if t.ready]


async def test_failed_start_tears_down_and_reports_the_log(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oci, "AGENT_ARGS", ["/bin/sh", "-c", "echo agent-broke >&2; exit 3"])
    monkeypatch.setattr(harness.rt, "ready_timeout", 2.0)
    spec = harness.spec()
    with pytest.raises(RuntimeFailure, match="agent-broke"):
        await harness.rt.create(spec)
    assert await harness.rt.leftovers(spec.id) == []


async def test_adopt_after_server_restart_in_another_cgroup(harness: Harness) -> None:
    sid = await harness.create()
    later = LinuxRuntime(harness.rt.data_dir, TEMPLATES, template_seed=template_seed())
    await later.start()
    try:
        # A restarted server may live in another cgroup: teardown must use the record.
        later.cgroup_parent = "/elsewhere"
        assert sid in await later.running()
        assert await later.adopt(sid)
        result = await later.channel(sid).exec(harness_exec("hostname"))
        assert result.stdout.decode().strip() == f"box-{sid[:6]}"
        await later.destroy(sid)
        assert await later.leftovers(sid) == []
        assert await harness.rt.leftovers(sid) == []
    finally:
        await later.close()


async def test_running_finds_orphans(harness: Harness) -> None:
    sid = await harness.create()
    # The container dies behind our back (as if killed): mounts and dir remain.
    await harness.rt.ocicli.kill_all(sid)
    await harness.rt.ocicli.delete(sid)
    assert not await harness.rt.is_alive(sid)
    assert not await harness.rt.adopt(sid)
    assert sid in await harness.rt.running()
    assert await harness.rt.leftovers(sid)
    await harness.rt.destroy(sid)
    assert await harness.rt.leftovers(sid) == []


async def test_sandbox_survives_a_killed_server(harness: Harness) -> None:
    sid = "k" + secrets.token_hex(7)
    harness.ids.add(sid)
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from sandbank.runtime.base import SandboxSpec\n"
        "from sandbank.runtime.linux.driver import LinuxRuntime\n"
        "async def main():\n"
        "    rt = LinuxRuntime(Path(sys.argv[1]), Path(sys.argv[2]), disk_pool_depth=0)\n"
        "    await rt.start()\n"
        "    await rt.create(SandboxSpec(id=sys.argv[3], template='base', vcpu=1,\n"
        "                                memory_mb=512, disk_gb=1, hostname='orphan'))\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, str(harness.rt.data_dir), str(TEMPLATES), sid],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        assert line.strip() == b"ready"
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert await harness.rt.adopt(sid)
    assert await harness.out(sid, "hostname") == "orphan"
    await harness.rt.destroy(sid)


async def test_concurrent_creates_and_destroys(harness: Harness) -> None:
    ids = await asyncio.gather(*(harness.create() for _ in range(5)))
    names = await asyncio.gather(*(harness.out(sid, "hostname") for sid in ids))
    assert sorted(names) == sorted(f"box-{sid[:6]}" for sid in ids)
    await asyncio.gather(*(harness.rt.destroy(sid) for sid in ids))
    for sid in ids:
        assert await harness.rt.leftovers(sid) == []


def harness_exec(script: str) -> ExecSpec:
    return ExecSpec(cmd=["/bin/bash", "-c", script])


# -- pause / resume ----------------------------------------------------------------------

TICKER = "sh -c 'while :; do date +%s%N >> /tmp/t; sleep 0.01; done' >/dev/null 2>&1 & echo $!"


async def test_pause_freezes_and_resume_continues(harness: Harness) -> None:
    sid = await harness.create()
    try:
        pid = await harness.out(sid, TICKER)
        await asyncio.sleep(0.3)
        await harness.rt.pause(sid)
        await harness.rt.pause(sid)  # idempotent
        cgroup = harness.rt.cgroup(sid)
        assert cgroup is not None and cgroup.frozen()
        paused_at = time.time_ns()
        # After a restart a frozen sandbox is adopted without its agent answering.
        later = LinuxRuntime(harness.rt.data_dir, TEMPLATES, template_seed=template_seed())
        await later.start()
        try:
            assert await asyncio.wait_for(later.adopt(sid), 2)
        finally:
            await later.close()
        assert cgroup.frozen()
        await asyncio.sleep(0.5)
        resumed_at = time.time_ns()
        await harness.rt.resume(sid)
        await harness.rt.resume(sid)  # idempotent
        assert not cgroup.frozen()
        await asyncio.sleep(0.3)
        ticks = [int(t) for t in (await harness.out(sid, "cat /tmp/t")).split()]
        assert not [t for t in ticks if paused_at < t < resumed_at]
        assert any(t < paused_at for t in ticks)
        assert any(t > resumed_at for t in ticks)
        # The same process goes on.
        assert await harness.out(sid, f"kill -0 {pid} && echo alive") == "alive"
    finally:
        await harness.rt.destroy(sid)


async def test_destroy_of_a_paused_sandbox_leaves_nothing(harness: Harness) -> None:
    sid = await harness.create()
    await harness.out(sid, TICKER)
    await harness.rt.pause(sid)
    await harness.rt.destroy(sid)
    assert await harness.rt.leftovers(sid) == []
    assert sid not in await harness.rt.running()
    with pytest.raises(SandboxUnavailable):
        await harness.rt.pause(sid)
