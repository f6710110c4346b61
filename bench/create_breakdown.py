"""Where a cold ``LinuxRuntime.create()`` spends its time: p50/p99 per phase over
sequential creates against the driver directly (no server, no HTTP), plus the
whole create, the first exec and the destroy.

    .venv/bin/python bench/create_breakdown.py [-n 40] [--customize]

``--customize`` also times ``customize()`` to other limits and hostname.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sandbank.runtime.base import ExecSpec, SandboxSpec  # noqa: E402
from sandbank.runtime.linux.driver import LinuxRuntime  # noqa: E402

BENCH_ROOT = Path(os.environ.get("SANDBANK_BENCH_ROOT", "/var/lib/sandbank-bench"))
TEMPLATES = Path(os.environ.get("SANDBANK_TEST_TEMPLATES", "/var/lib/sandbank-test/templates"))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{name:<16} p50={pct(ms, 50):7.2f} ms  p99={pct(ms, 99):7.2f} ms"


def spec(sid: str) -> SandboxSpec:
    return SandboxSpec(
        id=sid, template="base", vcpu=1, memory_mb=512, disk_gb=1, hostname=f"b-{sid[:6]}"
    )


async def main(n: int, warmup: int, customize: bool) -> None:
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o711)
    data_dir = BENCH_ROOT / f"breakdown-{os.getpid()}"
    rt = LinuxRuntime(data_dir, TEMPLATES)
    await rt.start()
    phases: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {"create": [], "first exec": [], "destroy": []}
    if customize:
        totals["customize"] = []
    true = ExecSpec(cmd=["true"])
    try:
        await rt.ensure_template("base")
        for i in range(warmup + n):
            # The pool refills in the background; give it its moment as a server would.
            await asyncio.sleep(0.05)
            sid = "bd" + secrets.token_hex(6)
            t0 = time.perf_counter()
            await rt.create(spec(sid))
            t1 = time.perf_counter()
            await rt.channel(sid).exec(true)
            t2 = time.perf_counter()
            if customize:
                await rt.customize(
                    SandboxSpec(
                        id=sid, template="base", vcpu=2, memory_mb=1024, disk_gb=1,
                        hostname="other", pids_limit=512,
                    )
                )  # fmt: skip
            t3 = time.perf_counter()
            marks = dict(rt.timings.get(sid, {}))
            await rt.destroy(sid)
            t4 = time.perf_counter()
            if i < warmup:
                continue
            for phase, seconds in marks.items():
                phases.setdefault(phase, []).append(seconds)
            totals["create"].append(t1 - t0)
            totals["first exec"].append(t2 - t1)
            if customize:
                totals["customize"].append(t3 - t2)
            totals["destroy"].append(t4 - t3)
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{n} creates (after {warmup} warm-up), {os.cpu_count()} CPUs")
    for phase, seconds in phases.items():
        print(line(phase, seconds))
    print("-" * 50)
    for name, seconds in totals.items():
        print(line(name, seconds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--customize", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.warmup, args.customize))
