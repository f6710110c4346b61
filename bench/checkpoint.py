"""Hibernate / wake and fork (CRIU) of a sandbox holding 100 MB of touched memory.

Prints the time of each HTTP call (the checkpoint or restore included), the
size of the hibernation images, and fork into 1 and into 5 copies, against a
goal of 200 ms for a fork into one. Then memory snapshots of the same sandbox
(time and size) and creates from one, next to plain creates (pool off) of the
same run.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import pct, running_server, summary

from sandbank import Sandbox, Snapshots

CYCLES = 5
FORKS_OF_ONE = 5
FORKS_OF_FIVE = 3
MEMORY_SNAPSHOTS = 3
CREATES = 5
GOAL_FORK_MS = 200.0

#: A process that holds 100 MiB, every page written (so every page is saved).
HOLD_100MB = (
    "nohup python3 -c '"
    "import time\n"
    "b = bytearray(100 * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "open(\"/tmp/ready\", \"w\").close()\n"
    "time.sleep(86400)' >/dev/null 2>&1 &\n"
    "for i in $(seq 500); do test -e /tmp/ready && break; sleep 0.02; done; test -e /tmp/ready"
)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    with (
        running_server("checkpoint") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
        assert sbx.commands.run(HOLD_100MB).exit_code == 0
        images = srv.data_dir / "sandboxes" / sbx.sandbox_id / "hibernated"
        hibernates, wakes, first_exec, sizes = [], [], [], []
        for _ in range(CYCLES):
            t0 = time.perf_counter()
            sbx.hibernate()
            hibernates.append(time.perf_counter() - t0)
            sizes.append(_size(images))
            t0 = time.perf_counter()
            sbx.wake()
            wakes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sbx.commands.run("true")
            first_exec.append(time.perf_counter() - t0)
        fork_idle = []
        with Sandbox.create(base_url=srv.url, api_key=srv.api_key) as idle:
            for _ in range(FORKS_OF_ONE):
                t0 = time.perf_counter()
                (copy,) = idle.fork(1)
                fork_idle.append(time.perf_counter() - t0)
                copy.kill()
        fork_one, fork_five = [], []
        for count, samples, reps in ((1, fork_one, FORKS_OF_ONE), (5, fork_five, FORKS_OF_FIVE)):
            for _ in range(reps):
                t0 = time.perf_counter()
                copies = sbx.fork(count)
                samples.append(time.perf_counter() - t0)
                for copy in copies:
                    copy.kill()
        memory = _memory_snapshots(srv.url, srv.api_key, sbx)
    print(summary("hibernate (100 MB touched)", hibernates))
    print(summary("wake (100 MB touched)", wakes))
    print(summary("first exec after wake", first_exec))
    print(f"{'hibernation images':<44} {sizes[-1] / 2**20:.1f} MiB")
    print(summary("fork into 1 (idle sandbox)", fork_idle))
    print(summary("fork into 1 (100 MB touched)", fork_one))
    print(summary("fork into 5 (100 MB touched)", fork_five))
    p50 = pct([s * 1000 for s in fork_one], 50)
    verdict = "within" if p50 <= GOAL_FORK_MS else "over"
    print(f"fork into 1 p50 {p50:.1f} ms: {verdict} the {GOAL_FORK_MS:g} ms goal")
    for line in memory:
        print(line)


def _timed_create(url: str, key: str, **kwargs: str) -> float:
    t0 = time.perf_counter()
    box = Sandbox.create(base_url=url, api_key=key, **kwargs)
    elapsed = time.perf_counter() - t0
    box.kill()
    return elapsed


def _memory_snapshots(url: str, key: str, sbx: Sandbox) -> list[str]:
    """Memory snapshots of ``sbx`` (100 MB touched) and creates from the last one,
    with plain creates interleaved so that both see the same load."""
    takes, sizes, from_snapshot, plain = [], [], [], []
    with Snapshots(base_url=url, api_key=key) as snapshots:
        for _ in range(MEMORY_SNAPSHOTS):
            t0 = time.perf_counter()
            snap = sbx.snapshot(memory=True)
            takes.append(time.perf_counter() - t0)
            sizes.append(snap.size_bytes)
            if len(takes) < MEMORY_SNAPSHOTS:
                snapshots.delete(snap.id)
        for _ in range(CREATES):
            plain.append(_timed_create(url, key))
            from_snapshot.append(_timed_create(url, key, snapshot=snap.id))
        snapshots.delete(snap.id)
    return [
        summary("memory snapshot (100 MB touched)", takes),
        f"{'memory snapshot size (disk + images)':<44} {sizes[-1] / 2**20:.1f} MiB",
        summary("create (template, pool off)", plain),
        summary("create from that memory snapshot", from_snapshot),
    ]


if __name__ == "__main__":
    main()
