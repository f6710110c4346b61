"""Hibernate / wake and fork (CRIU) of a sandbox holding 100 MB of touched memory.

Prints the time of each HTTP call (the checkpoint or restore included), the
size of the hibernation images, and fork into 1 and into 5 copies, against a
goal of 200 ms for a fork into one. Then memory snapshots of the same sandbox
(time and size) and creates from one, next to plain creates (pool off) of the
same run.

Each fork's phases (the service's, the source's dump, each copy's restore) are
read from the server's log and printed as medians per phase; ``http`` is the
time the SDK call took beyond the service's own total.

    .venv/bin/python bench/checkpoint.py [--fork-only] [-n 5] [--fives 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


class PhaseLog:
    """The ``phases <what> ...{json}`` lines the server logged since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        #: scenario -> "what: phase" -> samples (ms)
        self.table: dict[str, dict[str, list[float]]] = {}

    def take(self, scenario: str, elapsed_s: float) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
            self.offset = fh.tell()
        rows = self.table.setdefault(scenario, {})
        rows.setdefault("sdk call: total", []).append(elapsed_s * 1000)
        per_line: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            _, found, rest = line.partition(" phases ")
            if not found or "{" not in rest:
                continue
            what = rest.split()[0]
            figures = json.loads(rest[rest.index("{") :])
            merged = per_line.setdefault(what, {})
            for phase, ms in figures.items():
                # Several copies: the slowest of them is what the caller waits for.
                merged[phase] = max(merged.get(phase, 0.0), ms)
        for what, figures in per_line.items():
            for phase, ms in figures.items():
                rows.setdefault(f"{what}: {phase}", []).append(ms)
        service = per_line.get("fork-service", {}).get("total")
        if service is not None:
            rows.setdefault("http + sdk beyond service", []).append(elapsed_s * 1000 - service)

    def print(self) -> None:
        for scenario, rows in self.table.items():
            print(f"phases of {scenario} (median ms; of several copies, the slowest)")
            for name, samples in rows.items():
                print(f"  {name:<42} {statistics.median(samples):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fork-only", action="store_true", help="only the forks")
    parser.add_argument("-n", type=int, default=FORKS_OF_ONE, help="forks into 1 per case")
    parser.add_argument("--fives", type=int, default=FORKS_OF_FIVE, help="forks into 5")
    args = parser.parse_args()
    with (
        running_server("checkpoint", log_level="info") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
        assert sbx.commands.run(HOLD_100MB).exit_code == 0
        phase_log = PhaseLog(srv.log_path)
        images = srv.data_dir / "sandboxes" / sbx.sandbox_id / "hibernated"
        hibernates, wakes, first_exec, sizes = [], [], [], []
        for _ in range(0 if args.fork_only else CYCLES):
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
        fork_idle: list[float] = []
        with Sandbox.create(base_url=srv.url, api_key=srv.api_key) as idle:
            phase_log.take("discarded", 0)
            for _ in range(args.n):
                t0 = time.perf_counter()
                (copy,) = idle.fork(1)
                fork_idle.append(time.perf_counter() - t0)
                phase_log.take("fork into 1 (idle)", fork_idle[-1])
                copy.kill()
        fork_one: list[float] = []
        fork_five: list[float] = []
        cases = ((1, fork_one, args.n), (5, fork_five, args.fives))
        for count, samples, reps in cases:
            for _ in range(reps):
                t0 = time.perf_counter()
                copies = sbx.fork(count)
                samples.append(time.perf_counter() - t0)
                phase_log.take(f"fork into {count} (100 MB)", samples[-1])
                for copy in copies:
                    copy.kill()
        memory = [] if args.fork_only else _memory_snapshots(srv.url, srv.api_key, sbx)
    phase_log.table.pop("discarded", None)
    phase_log.print()
    if hibernates:
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
