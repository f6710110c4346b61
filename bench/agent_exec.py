"""``AgentClient.exec`` alone, without the HTTP stack: p50/p99 of small commands
against the agent of a real sandbox (driver-created, no server).

    .venv/bin/python bench/agent_exec.py [-n 400]
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

from sandbank.runtime.agent_client import AgentClient  # noqa: E402
from sandbank.runtime.base import ExecSpec, SandboxSpec  # noqa: E402
from sandbank.runtime.linux.driver import LinuxRuntime  # noqa: E402

BENCH_ROOT = Path(os.environ.get("SANDBANK_BENCH_ROOT", "/var/lib/sandbank-bench"))
TEMPLATES = Path(os.environ.get("SANDBANK_TEST_TEMPLATES", "/var/lib/sandbank-test/templates"))

CASES = {
    "exec ['true']": ExecSpec(cmd=["true"]),
    "exec ['true'] as root": ExecSpec(cmd=["true"], user="root"),
    "exec bash -c true": ExecSpec(cmd=["/bin/bash", "-c", "true"]),
    "exec echo (output)": ExecSpec(cmd=["echo", "hello"]),
    "exec cat (stdin)": ExecSpec(cmd=["cat"], stdin=b"x" * 1000),
}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def measure(client: AgentClient, n: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in CASES}
    results["ping"] = []
    for _ in range(20):
        await client.exec(CASES["exec ['true']"])
    # Interleaved, so that a busy moment of the host hits every case alike.
    for _ in range(n):
        for name, spec in CASES.items():
            t0 = time.perf_counter()
            await client.exec(spec)
            results[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await client.ping()
        results["ping"].append(time.perf_counter() - t0)
    return results


async def main(n: int) -> None:
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o711)
    data_dir = BENCH_ROOT / f"agent-exec-{os.getpid()}"
    rt = LinuxRuntime(data_dir, TEMPLATES, disk_pool_depth=0)
    await rt.start()
    sid = "ae" + secrets.token_hex(6)
    try:
        await rt.create(
            SandboxSpec(id=sid, template="base", vcpu=1, memory_mb=512, disk_gb=1, hostname="b")
        )
        client = rt.channel(sid)
        assert isinstance(client, AgentClient)
        results = await measure(client, n)
    finally:
        for running in await rt.running():
            await rt.destroy(running)
        await rt.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    for name, seconds in results.items():
        ms = [s * 1000 for s in seconds]
        print(f"{name:<24} n={len(ms):<5} p50={pct(ms, 50):6.3f} ms  p99={pct(ms, 99):6.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400)
    asyncio.run(main(parser.parse_args().n))
