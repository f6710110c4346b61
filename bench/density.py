"""Density: how many idle sandboxes this host holds in each state, and what each costs.

Starts one server and, for each state in turn (running, paused, hibernated),
creates sandboxes (``-c`` at a time) until N of them are idle, brings each into
that state (``POST /pause``, ``POST /hibernate``), then measures and prints:

* memory: host-wide (``/proc/meminfo`` before and after, so kernel-side costs
  are in: slab, page tables, kernel stacks, percpu, page cache), the sandbox
  cgroups' own charge (``memory.usage_in_bytes``/``memory.current``: the
  processes' pages plus the page cache and kernel memory charged to them),
  the PSS of every process in the sandboxes (``/proc/<pid>/smaps_rollup``;
  pages shared between sandboxes, such as the python binary of the agent,
  are split between them), the page cache of the disk images (``fincore``),
  the checkpoint images on disk (hibernated), and the server process itself;
* create time p50/p99 per fifth of the run (does it degrade as the count
  grows?), and the same for the pause or hibernate of each;
* bringing one back at N: exec round trip on random running ones (and on one
  alone, before the others), resume or wake of random paused or hibernated
  ones and their first exec (each is put back into its state afterwards);
* the time to kill them all, and that the host is clean afterwards (no
  sandbox dirs, mounts, loop devices, cgroups, veths or nft objects left).

    .venv/bin/python bench/density.py [--running 500] [--paused 500]
        [--hibernated 100] [--state running|paused|hibernated|all] [-c 4]

Interrupted (Ctrl-C, SIGTERM), it still kills every sandbox and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _common import pct, running_server

from sandbank import AsyncSandbox
from sandbank.runtime.linux.cgroups import CgroupLayout
from sandbank.runtime.linux.layout import SandboxRecord
from sandbank.runtime.linux.netrules import FAMILY, TABLE
from sandbank.runtime.linux.network import SandboxNetworks

MIB = 1024 * 1024
MEMINFO_FIELDS = ("Used", "AnonPages", "Cached", "Shmem", "Slab", "SUnreclaim", "KernelStack",
                  "PageTables", "Percpu")  # fmt: skip


def meminfo() -> dict[str, int]:
    """Bytes per /proc/meminfo field; ``Used`` is MemTotal - MemAvailable."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    out["Used"] = out["MemTotal"] - out["MemAvailable"]
    return out


def rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, Pss_Anon, Pss_File (bytes) of one process; empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def p50(samples: list[float]) -> float:
    """The median, 0 for none (a hibernated sandbox has no process)."""
    return pct(samples, 50) if samples else 0.0


def server_stats(pid: int) -> str:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    roll = rollup(pid)
    rss, pss = roll["Rss"] / MIB, roll["Pss"] / MIB
    return f"rss {rss:.0f} MiB, pss {pss:.0f} MiB, {fds} fds, {threads} threads"


def fincore_bytes(paths: list[str]) -> int:
    """Bytes of ``paths`` in the page cache."""
    total = 0
    for i in range(0, len(paths), 200):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *paths[i : i + 200]],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        total += sum(int(x) for x in out.split())
    return total


class Measure:
    """What the kernel says about the sandboxes of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.layout = CgroupLayout.detect()
        self.records: dict[str, SandboxRecord] = {}
        self.networks = SandboxNetworks(str(data_dir))

    def record(self, sid: str) -> SandboxRecord:
        if sid not in self.records:
            rec = SandboxRecord.load(self.data_dir / "sandboxes" / sid / "runtime.json")
            assert rec is not None, sid
            self.records[sid] = rec
        return self.records[sid]

    def sandboxes(self, ids: list[str]) -> dict[str, float]:
        cgroup_bytes, pss, procs, agent_pss, agent_rss, agent_uss = 0, 0, 0, [], [], []
        for sid in ids:
            cg = self.layout.cgroup(self.record(sid).cgroups_path)
            with contextlib.suppress(OSError):  # a hibernated sandbox has no cgroup
                cgroup_bytes += cg.memory_current()
            pids = sorted(cg.procs())
            procs += len(pids)
            for pid in pids:
                roll = rollup(pid)
                pss += roll.get("Pss", 0)
            if pids:  # the lowest pid is the agent, the sandbox's PID 1
                roll = rollup(pids[0])
                agent_pss.append(roll.get("Pss", 0))
                agent_rss.append(roll.get("Rss", 0))
                agent_uss.append(roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0))
        images = [str(self.data_dir / "sandboxes" / sid / "disk.img") for sid in ids]
        dirs = [self.data_dir / "sandboxes" / sid / "hibernated" for sid in ids]
        saved = [f for d in dirs for f in d.rglob("*") if f.is_file()]
        loops = self.loops()
        n = max(1, len(ids))
        return {
            "cgroup": cgroup_bytes / n, "pss": pss / n, "procs": procs / n,
            "agent_pss": p50(agent_pss), "agent_rss": p50(agent_rss),
            "agent_uss": p50(agent_uss),
            "image_cache": fincore_bytes(images) / n,
            "loop_cache": fincore_bytes(loops) / n if loops else 0, "loops": len(loops),
            "saved": sum(f.stat().st_blocks * 512 for f in saved) / n,
            "saved_cache": fincore_bytes([str(f) for f in saved]) / n if saved else 0,
        }  # fmt: skip

    def loops(self) -> list[str]:
        found = []
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if backing.read_text().startswith(str(self.data_dir)):
                    found.append("/dev/" + backing.parts[3])
            except OSError:
                pass
        return found

    def leftovers(self, ids: list[str]) -> list[str]:
        left = []
        dirs = sum(1 for sid in ids if (self.data_dir / "sandboxes" / sid).exists())
        if dirs:
            left.append(f"{dirs} sandbox dirs")
        mountinfo = Path("/proc/self/mountinfo").read_text()
        n_mounts = mountinfo.count(str(self.data_dir / "sandboxes") + "/")
        if n_mounts:
            left.append(f"{n_mounts} mounts")
        if loops := self.loops():
            left.append(f"{len(loops)} loop devices")
        cgroups = sum(
            1 for sid in ids for d in self.layout.cgroup(self.record(sid).cgroups_path).existing()
        )
        if cgroups:
            left.append(f"{cgroups} cgroup dirs")
        prefix = self.networks.alias("")
        veths = 0
        for alias in Path("/sys/class/net").glob("*/ifalias"):
            with contextlib.suppress(OSError):
                veths += alias.read_text().startswith(prefix)
        if veths:
            left.append(f"{veths} veths")
        table = subprocess.run(
            ["nft", "list", "table", FAMILY, TABLE], capture_output=True, text=True, check=False
        ).stdout
        nft = sum(1 for sid in ids if self.networks.names(sid).key in table)
        if nft:
            left.append(f"nft objects of {nft} sandboxes")
        return left


STATES = ("running", "paused", "hibernated")
#: The call that brings a sandbox into each state, and the one that brings it back.
ENTER = {"paused": "pause", "hibernated": "hibernate"}
LEAVE = {"paused": "resume", "hibernated": "wake"}
BACK_SAMPLES = 5


async def create_one(http: httpx.AsyncClient, timeout: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    resp = await http.post("/v1/sandboxes", json={"template": "base", "timeout": timeout})
    if resp.status_code != 201:
        raise RuntimeError(f"create: {resp.status_code} {resp.text[:500]}")
    return resp.json()["id"], time.perf_counter() - t0


async def call(http: httpx.AsyncClient, sid: str, op: str) -> float:
    """``POST /v1/sandboxes/{sid}/{op}``; seconds it took."""
    t0 = time.perf_counter()
    resp = await http.post(f"/v1/sandboxes/{sid}/{op}")
    if resp.status_code != 200:
        raise RuntimeError(f"{op} {sid}: {resp.status_code} {resp.text[:500]}")
    return time.perf_counter() - t0


async def exec_rtt(url: str, key: str, sid: str, n: int, warm: bool = True) -> list[float]:
    """``n`` timed ``true`` execs; without ``warm`` the first one is timed too."""
    # Not ``async with``: leaving that kills the sandbox.
    sbx = await AsyncSandbox.connect(sid, api_key=key, base_url=url)
    try:
        if warm:
            await sbx.commands.run(["true"])
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await sbx.commands.run(["true"])
            samples.append(time.perf_counter() - t0)
    finally:
        await sbx.close()
    return samples


async def in_turn(
    concurrency: int, items: list[str], job: Callable[[str], Awaitable[float]], progress: str = ""
) -> list[tuple[int, float]]:
    """``job(item)`` for each item, ``concurrency`` at a time: (position, seconds) each."""
    queue = asyncio.Queue[tuple[int, str]]()
    for pos, item in enumerate(items):
        queue.put_nowait((pos, item))
    out: list[tuple[int, float]] = []
    started = time.perf_counter()

    async def worker() -> None:
        while not queue.empty():
            pos, item = queue.get_nowait()
            out.append((pos, await job(item)))
            if progress and len(out) % 50 == 0:
                print(f"  {len(out)} {progress} ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def by_fifth(what: str, timed: list[tuple[int, float]]) -> list[str]:
    """p50/p99 of ``timed`` per fifth of the run (one slice under 50)."""
    rows = [f"{what} by position in the run"]
    n = len(timed)
    slices = 5 if n >= 50 else 1
    size = max(1, n // slices)
    for s in range(slices):
        part = [t for _i, t in timed[s * size : (s + 1) * size if s < slices - 1 else None]]
        lo, hi = s * size + 1, (s + 1) * size if s < slices - 1 else n
        rows.append(f"  {lo:>4}-{hi:<4} p50 {ms(pct(part, 50))}  p99 {ms(pct(part, 99))}")
    return rows


async def phase(srv, state: str, n: int, concurrency: int, settle: float) -> list[str]:  # type: ignore[no-untyped-def]
    """Fill to ``n`` sandboxes in ``state``, measure, kill them all; the report."""
    measure = Measure(srv.data_dir)
    server_pid = srv.proc.pid
    ids: list[str] = []
    rows = [f"== {state}: {n} idle sandboxes, {concurrency} calls at a time, "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"]  # fmt: skip
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=srv.url, headers=headers, timeout=300, limits=limits
    ) as http:
        try:
            await asyncio.sleep(settle)
            before = meminfo()
            rows.append(f"server at 0 sandboxes: {server_stats(server_pid)}")
            one: list[float] = []
            alone: list[tuple[int, float]] = []
            if state == "running":  # exec on a sandbox alone on the host
                sid, took = await create_one(http, 3600)
                alone.append((-1, took))
                ids.append(sid)
                one = await exec_rtt(srv.url, srv.api_key, sid, 50)

            async def create(_item: str) -> float:
                sid, took = await create_one(http, 3600)
                ids.append(sid)
                return took

            started = time.perf_counter()
            to_fill = n - len(ids)
            creates = await in_turn(concurrency, [""] * to_fill, create, "created")
            creates = alone + creates
            fill = time.perf_counter() - started
            entered: list[tuple[int, float]] = []
            enter = 0.0
            if state in ENTER:
                started = time.perf_counter()
                entered = await in_turn(
                    concurrency, list(ids), lambda s: call(http, s, ENTER[state]), state
                )
                enter = time.perf_counter() - started
            await asyncio.sleep(settle)
            after = meminfo()
            per = measure.sandboxes(ids)
            rows.append(f"server at {n} sandboxes: {server_stats(server_pid)}")
            back: list[float] = []
            first_exec: list[float] = []
            for sid in random.sample(ids, min(BACK_SAMPLES, len(ids))):
                if state in LEAVE:
                    back.append(await call(http, sid, LEAVE[state]))
                    first_exec += await exec_rtt(srv.url, srv.api_key, sid, 1, warm=False)
                    await call(http, sid, ENTER[state])
                else:
                    back += await exec_rtt(srv.url, srv.api_key, sid, 20)
        finally:
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(concurrency * 2)
            failed: list[str] = []

            async def kill(sid: str) -> None:
                async with sem:
                    try:
                        resp = await http.delete(f"/v1/sandboxes/{sid}")
                    except httpx.HTTPError as exc:
                        failed.append(f"{sid}: {exc!r}")
                        return
                    if resp.status_code != 204:
                        failed.append(f"{sid}: {resp.status_code} {resp.text[:1000]}")

            await asyncio.gather(*(kill(s) for s in ids))
            kill_all = time.perf_counter() - t0
            for failure in failed:
                print(f"kill failed: {failure}", file=sys.stderr)
    left = measure.leftovers(ids)

    rows.append(f"reached {len(ids)} {state}; created in {fill:.1f} s "
                f"({to_fill / max(fill, 1e-6):.1f}/s)" + (f", {ENTER[state]}d in {enter:.1f} s "
                f"({n / max(enter, 1e-6):.1f}/s)" if state in ENTER else ""))  # fmt: skip
    rows.append(f"{'host memory (meminfo delta)':<34}{'total':>12}{'per sandbox':>14}")
    for field in MEMINFO_FIELDS:
        delta = after[field] - before[field]
        rows.append(f"  {field:<32}{delta / MIB:>8.1f} MiB{delta / n / 1024:>10.0f} KiB")
    rows.append(f"{'per sandbox (mean)':<34}")
    rows.append(f"  {'cgroup memory charge':<32}{per['cgroup'] / 1024:>10.0f} KiB")
    rows.append(f"  {'PSS of its processes':<32}{per['pss'] / 1024:>10.0f} KiB"
                f"   ({per['procs']:.1f} processes)")  # fmt: skip
    rows.append(f"  {'agent (PID 1) RSS, p50':<32}{per['agent_rss'] / 1024:>10.0f} KiB")
    rows.append(f"  {'agent (PID 1) PSS, p50':<32}{per['agent_pss'] / 1024:>10.0f} KiB")
    rows.append(f"  {'agent (PID 1) private, p50':<32}{per['agent_uss'] / 1024:>10.0f} KiB")
    rows.append(f"  {'disk image page cache':<32}{per['image_cache'] / 1024:>10.0f} KiB")
    rows.append(f"  {'loop device page cache':<32}{per['loop_cache'] / 1024:>10.0f} KiB"
                f"   ({per['loops']} loop devices)")  # fmt: skip
    if state == "hibernated":
        rows.append(f"  {'checkpoint images on disk':<32}{per['saved'] / 1024:>10.0f} KiB")
        rows.append(f"  {'  of which in page cache':<32}{per['saved_cache'] / 1024:>10.0f} KiB")
    rows += by_fifth("create", creates)
    if state in ENTER:
        rows += by_fifth(ENTER[state], entered)
        rows.append(f"{LEAVE[state]} at {n} ({len(back)} random) p50 {ms(pct(back, 50))}, "
                    f"first exec after it p50 {ms(pct(first_exec, 50))}")  # fmt: skip
    else:
        rows.append(f"exec ['true'] RTT p50: at 1 sandbox {ms(pct(one, 50))}, "
                    f"at {n} ({len(back) // 20} random) {ms(pct(back, 50))}")  # fmt: skip
    rows.append(f"kill all {len(ids)}: {kill_all:.1f} s ({len(ids) / kill_all:.1f}/s), "
                f"{len(failed)} failed")  # fmt: skip
    rows.append("host clean afterwards: " + ("yes" if not left else "NO: " + ", ".join(left)))
    return rows


async def run(srv, counts: dict[str, int], concurrency: int, settle: float) -> None:  # type: ignore[no-untyped-def]
    for state, n in counts.items():
        rows = await phase(srv, state, n, concurrency, settle)
        print("\n".join(rows) + "\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", choices=(*STATES, "all"), default="all",
                        help="the state to measure; all: each in turn")  # fmt: skip
    parser.add_argument("--running", "-n", type=int, default=500, help="idle running sandboxes")
    parser.add_argument("--paused", type=int, default=500, help="paused sandboxes")
    parser.add_argument("--hibernated", type=int, default=100, help="hibernated sandboxes")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="calls at a time")
    parser.add_argument("--settle", type=float, default=5, help="seconds before each reading")
    args = parser.parse_args()
    wanted = STATES if args.state == "all" else (args.state,)
    counts = {s: getattr(args, s) for s in wanted if getattr(args, s) > 0}
    if not counts:
        parser.error("nothing to do: every selected state has a count of 0")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    room = max(counts.values()) + 10  # each state's sandboxes are gone before the next
    env = {
        "SANDBANK_QUOTA_MAX_SANDBOXES": str(room),
        "SANDBANK_QUOTA_MAX_VCPU": str(room),
        "SANDBANK_QUOTA_MAX_MEMORY_MB": str(room * 8192),
        "SANDBANK_LOG_LEVEL": "warning",
    }
    with running_server("density", **env) as srv:
        asyncio.run(run(srv, counts, args.concurrency, args.settle))


if __name__ == "__main__":
    main()
