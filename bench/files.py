"""File transfer throughput: a 100 MB file up and down through the SDK (and a
directory holding it, as a tar stream), against a plain ``cp`` of the same file
on the same disk in the same run. Prints MB/s and the ratio to cp (best of
the rounds on both sides, then the medians), and the CPU each process spent
per 100 MiB (steadier than wall time on a shared machine); the goal is at
least 50% of cp.

    python bench/files.py [--mb 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from _common import BENCH_ROOT, running_server

from sandbank import Sandbox

GOAL = 0.5


#: Processes whose CPU time each transfer reports: server, agent (set once they run).
PIDS: list[int] = []
#: Per timed action: mean CPU ms of this process (the SDK), server and agent (the
#: mean: a process's CPU time counts in 10 ms ticks).
CPU_MS: list[tuple[float, ...]] = []
MIB_100 = 100 * 1024 * 1024


def agent_pid(sandbox_id: str) -> int:
    """The sandbox's agent: the process in the sandbox's cgroup that runs sandbank.agent."""
    for proc in Path("/proc").iterdir():
        try:
            if (
                sandbox_id in (proc / "cgroup").read_text()
                and b"sandbank.agent" in (proc / "cmdline").read_bytes()
            ):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    raise SystemExit(f"no agent process found for {sandbox_id}")


def own_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def timed(
    action: Callable[[], object], rounds: int, reset: Callable[[], object]
) -> tuple[float, float]:
    """Best and median seconds of ``action`` over ``rounds`` runs, ``reset``
    between them; the mean CPU time it cost each process is appended to CPU_MS."""
    samples: list[float] = []
    cpu: list[list[float]] = []
    for _ in range(rounds):
        reset()
        before = [own_cpu_ms(), *(cpu_ms(pid) for pid in PIDS)]
        t0 = time.perf_counter()
        action()
        samples.append(time.perf_counter() - t0)
        after = [own_cpu_ms(), *(cpu_ms(pid) for pid in PIDS)]
        cpu.append([b - a for a, b in zip(before, after, strict=True)])
    CPU_MS.append(tuple(statistics.fmean(column) for column in zip(*cpu, strict=True)))
    return min(samples), statistics.median(samples)


def line(
    name: str,
    size: int,
    seconds: tuple[float, float],
    baseline: tuple[float, float] | None,
    cpu: tuple[float, ...],
) -> str:
    best, median = seconds
    text = f"{name:<30} {size / best / 1e6:6.0f} MB/s ({size / median / 1e6:6.0f})"
    if baseline is not None:
        per_100mib = MIB_100 / size
        sdk, server, agent = (c * per_100mib for c in cpu)
        text += f" {baseline[0] / best * 100:4.0f}% of cp ({baseline[1] / median * 100:3.0f}%)"
        text += f"  CPU ms/100MiB sdk/server/agent {sdk:4.0f}/{server:4.0f}/{agent:4.0f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    scratch = BENCH_ROOT / f"files-{os.getpid()}"
    scratch.mkdir(parents=True)
    try:
        source_dir = scratch / "src"
        source_dir.mkdir()
        source = source_dir / "data.bin"
        with source.open("wb") as out:
            block = os.urandom(1 << 20)
            for start in range(0, size, len(block)):
                out.write(block[: min(len(block), size - start)])
        copy = scratch / "copy.bin"
        back = scratch / "back.bin"
        back_dir = scratch / "back"

        def rm_copy() -> None:
            copy.unlink(missing_ok=True)

        cp_s = timed(lambda: subprocess.run(["cp", source, copy], check=True), args.rounds, rm_copy)
        with (
            running_server("files") as srv,
            Sandbox.create(base_url=srv.url, api_key=srv.api_key, disk_gb=2) as sbx,
        ):
            assert srv.proc is not None
            PIDS.extend([srv.proc.pid, agent_pid(sbx.sandbox_id)])
            remote = "/home/user/data.bin"

            def rm_remote() -> None:
                sbx.commands.run(f"rm -rf {remote} /home/user/dir")

            up_s = timed(lambda: sbx.files.upload(source, remote), args.rounds, rm_remote)
            down_s = timed(
                lambda: sbx.files.download(remote, back),
                args.rounds,
                lambda: back.unlink(missing_ok=True),
            )
            assert back.stat().st_size == size
            up_dir_s = timed(
                lambda: sbx.files.upload_dir(source_dir, "/home/user/dir"),
                args.rounds,
                lambda: sbx.commands.run("rm -rf /home/user/dir"),
            )
            down_dir_s = timed(
                lambda: sbx.files.download_dir("/home/user/dir", back_dir),
                args.rounds,
                lambda: shutil.rmtree(back_dir, ignore_errors=True),
            )
            assert (back_dir / "data.bin").stat().st_size == size
        print(
            f"{args.mb} MB, best of {args.rounds} rounds (median in brackets), "
            f"disk under {BENCH_ROOT}, load {os.getloadavg()[0]:.1f}"
        )
        cpu = CPU_MS[1:]
        print(line("cp (same disk)", size, cp_s, None, ()))
        print(line("SDK upload (files.upload)", size, up_s, cp_s, cpu[0]))
        print(line("SDK download (files.download)", size, down_s, cp_s, cpu[1]))
        print(line("SDK upload_dir (tar stream)", size, up_dir_s, cp_s, cpu[2]))
        print(line("SDK download_dir (tar stream)", size, down_dir_s, cp_s, cpu[3]))
        worst = max(up_s[0], down_s[0])
        ratio = cp_s[0] / worst
        verdict = "meets" if ratio >= GOAL else "misses"
        print(f"slower direction at {ratio * 100:.0f}% of cp (best): {verdict} the 50% goal")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
