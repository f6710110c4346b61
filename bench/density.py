"""Density: how many idle sandboxes this host holds, and what each one costs.

Starts a server, creates sandboxes (``-c`` at a time) until ``-n`` of them run
idle, then measures and prints:

* memory: host-wide (``/proc/meminfo`` before and after, so kernel-side costs
  are in: slab, page tables, kernel stacks, percpu, page cache), the sandbox
  cgroups' own charge (``memory.usage_in_bytes``/``memory.current``: the
  processes' pages plus the page cache and kernel memory charged to them),
  the PSS of every process in the sandboxes (``/proc/<pid>/smaps_rollup``;
  pages shared between sandboxes, such as the python binary of the agent,
  are split between them), the page cache of the disk images (``fincore``),
  and the server process itself (RSS, descriptors, threads);
* create time p50/p99 per slice of the run (does it degrade as the count grows?);
* exec round trip p50 on one sandbox when it is alone and on random ones at N;
* the time to kill them all, and that the host is clean afterwards (no
  mounts, loop devices, cgroups, veths or nft objects of theirs left).

    .venv/bin/python bench/density.py [-n 500] [-c 4]

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
        loops = self.loops()
        n = max(1, len(ids))
        return {
            "cgroup": cgroup_bytes / n, "pss": pss / n, "procs": procs / n,
            "agent_pss": pct(agent_pss, 50), "agent_rss": pct(agent_rss, 50),
            "agent_uss": pct(agent_uss, 50),
            "image_cache": fincore_bytes(images) / n,
            "loop_cache": fincore_bytes(loops) / n if loops else 0, "loops": len(loops),
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


async def create_one(http: httpx.AsyncClient, timeout: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    resp = await http.post("/v1/sandboxes", json={"template": "base", "timeout": timeout})
    if resp.status_code != 201:
        raise RuntimeError(f"create: {resp.status_code} {resp.text[:500]}")
    return resp.json()["id"], time.perf_counter() - t0


async def exec_rtt(url: str, key: str, sid: str, n: int) -> list[float]:
    # Not ``async with``: leaving that kills the sandbox.
    sbx = await AsyncSandbox.connect(sid, api_key=key, base_url=url)
    try:
        await sbx.commands.run(["true"])
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await sbx.commands.run(["true"])
            samples.append(time.perf_counter() - t0)
    finally:
        await sbx.close()
    return samples


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def run(srv, n: int, concurrency: int, settle: float) -> list[str]:  # type: ignore[no-untyped-def]
    measure = Measure(srv.data_dir)
    server_pid = srv.proc.pid
    ids: list[str] = []
    rows: list[str] = []
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=srv.url, headers=headers, timeout=300, limits=limits
    ) as http:
        try:
            await asyncio.sleep(settle)
            before = meminfo()
            rows.append(f"server at 0 sandboxes: {server_stats(server_pid)}")
            sid, first = await create_one(http, 3600)
            ids.append(sid)
            one = await exec_rtt(srv.url, srv.api_key, sid, 50)
            rows.append(f"server at 1 sandbox:   {server_stats(server_pid)}")
            creates: list[tuple[int, float]] = [(1, first)]
            queue = asyncio.Queue[int]()
            for i in range(2, n + 1):
                queue.put_nowait(i)
            started = time.perf_counter()

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    sid, took = await create_one(http, 3600)
                    ids.append(sid)
                    creates.append((i, took))
                    if len(ids) % 50 == 0:
                        print(f"  {len(ids)} running ({time.perf_counter() - started:.0f} s)",
                              file=sys.stderr, flush=True)  # fmt: skip

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            fill = time.perf_counter() - started
            await asyncio.sleep(settle)
            after = meminfo()
            per = measure.sandboxes(ids)
            rows.append(f"server at {n} sandboxes: {server_stats(server_pid)}")
            many: list[float] = []
            for sid in random.sample(ids, min(5, len(ids))):
                many += await exec_rtt(srv.url, srv.api_key, sid, 20)
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

    rows.append("")
    rows.append(f"{n} idle sandboxes, {concurrency} creates at a time, {os.cpu_count()} CPUs: "
                f"filled in {fill:.1f} s ({(n - 1) / fill:.1f}/s)")  # fmt: skip
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
    rows.append("create time by position in the run")
    creates.sort()
    slices = 5 if n >= 50 else 1
    size = max(1, n // slices)
    for s in range(slices):
        part = [t for i, t in creates[s * size : (s + 1) * size if s < slices - 1 else None]]
        lo, hi = s * size + 1, (s + 1) * size if s < slices - 1 else n
        rows.append(f"  {lo:>4}-{hi:<4} p50 {ms(pct(part, 50))}  p99 {ms(pct(part, 99))}")
    rows.append(f"exec ['true'] RTT p50: at 1 sandbox {ms(pct(one, 50))}, "
                f"at {n} (5 random) {ms(pct(many, 50))}")  # fmt: skip
    rows.append(f"kill all {n}: {kill_all:.1f} s ({n / kill_all:.1f}/s), {len(failed)} failed")
    rows.append("host clean afterwards: " + ("yes" if not left else "NO: " + ", ".join(left)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="idle sandboxes to reach")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="creates at a time")
    parser.add_argument("--settle", type=float, default=5, help="seconds before each reading")
    args = parser.parse_args()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    env = {
        "SANDBANK_QUOTA_MAX_SANDBOXES": str(args.n + 10),
        "SANDBANK_QUOTA_MAX_VCPU": str(args.n + 10),
        "SANDBANK_QUOTA_MAX_MEMORY_MB": str((args.n + 10) * 8192),
        "SANDBANK_LOG_LEVEL": "warning",
    }
    with running_server("density", **env) as srv:
        rows = asyncio.run(run(srv, args.n, args.concurrency, args.settle))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
