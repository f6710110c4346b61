"""Lifecycle timings on one server, in one run:

- pause / resume: 50 cycles with a process running inside (goal: resume p50
  within 10 ms);
- stop -> start: 15 cycles (start includes the agent answering), and the first
  exec after start;
- snapshots of a sandbox holding 64 MB of data: time and host size, with the
  copy method the data dir allows;
- create from a snapshot against create from the template (cold, no warm pool),
  15 of each, interleaved;
- create from the warm pool (goal: p50 within 5 ms) against a cold create, 30
  of each, interleaved on two servers running side by side (one with a pool of
  2, one without), with the pool full before each pooled create; and the
  server's own hand-out time (from its /metrics).

``python bench/lifecycle.py pool`` runs the last section alone.
"""

from __future__ import annotations

import sys
import time

from _common import ServerProcess, metric, pct, running_server, summary

from sandbank import Sandbox, Snapshots

N = 50
N_STOP = 15
N_SNAP = 10
N_CREATE = 15
GOAL_MS = 10.0
N_POOL = 30
POOL_SIZE = 2
POOL_GOAL_MS = 5.0
MIB = 2**20


def pause_resume(sbx: Sandbox) -> None:
    sbx.commands.run("while :; do sleep 0.01; done", background=True)
    pauses, resumes, first_exec = [], [], []
    for _ in range(N):
        t0 = time.perf_counter()
        sbx.pause()
        pauses.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sbx.resume()
        resumes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sbx.commands.run("true")
        first_exec.append(time.perf_counter() - t0)
    print(summary("pause (freeze until FROZEN)", pauses))
    print(summary("resume from pause", resumes))
    print(summary("first exec after resume", first_exec))
    p50 = pct([s * 1000 for s in resumes], 50)
    verdict = "within" if p50 <= GOAL_MS else "over"
    print(f"resume p50 {p50:.2f} ms: {verdict} the {GOAL_MS:g} ms goal")


def stop_start(sbx: Sandbox) -> None:
    stops, starts, first_exec = [], [], []
    for _ in range(N_STOP):
        t0 = time.perf_counter()
        sbx.stop()
        stops.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sbx.start()
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sbx.commands.run("true")
        first_exec.append(time.perf_counter() - t0)
    print(summary("stop (processes, cgroup, network, mounts)", stops))
    print(summary("start on the kept disk (agent answering)", starts))
    print(summary("first exec after start", first_exec))


def snapshots(sbx: Sandbox, creds: dict[str, str]) -> str:
    sbx.commands.run("head -c 64000000 /dev/urandom > ~/blob")
    times, sizes, ids = [], [], []
    for _ in range(N_SNAP):
        t0 = time.perf_counter()
        snap = sbx.snapshot()
        times.append(time.perf_counter() - t0)
        sizes.append(snap.size_bytes)
        ids.append(snap.id)
    # Read after the first snapshot: its freeze wrote the sandbox's dirty pages out.
    disk = sbx.get_info().disk_bytes or 0
    print(summary("snapshot of a running sandbox (64 MB data)", times))
    print(
        f"{'  disk image on the host':<44} {disk / MIB:8.1f} MiB; "
        f"snapshot {pct([s / MIB for s in sizes], 50):.1f} MiB "
        "(sparse copy; the apparent size is the whole disk)"
    )
    with Snapshots(**creds) as client:
        for snapshot_id in ids[1:]:
            client.delete(snapshot_id)
    return ids[0]


def create_from(snapshot_id: str, creds: dict[str, str]) -> None:
    from_snap, from_template = [], []
    for _ in range(N_CREATE):
        for samples, extra in ((from_template, {}), (from_snap, {"snapshot": snapshot_id})):
            t0 = time.perf_counter()
            sbx = Sandbox.create(**creds, **extra)
            samples.append(time.perf_counter() - t0)
            sbx.kill()
    print(summary("create from the template (cold)", from_template))
    print(summary("create from a snapshot (64 MB data)", from_snap))


def wait_for_pool(srv: ServerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(srv, "sandbank_pool_size", template="base") < POOL_SIZE:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not refill to {POOL_SIZE} within {timeout} s")
        time.sleep(0.01)


def pool_against_cold() -> None:
    pooled: list[float] = []
    cold: list[float] = []
    with (
        running_server("lifecycle-pool", SANDBANK_POOL_SIZE=str(POOL_SIZE)) as warm,
        running_server("lifecycle-cold") as plain,
    ):
        wait_for_pool(warm)
        # The first create of each server pays for imports and caches.
        Sandbox.create(base_url=warm.url, api_key=warm.api_key).kill()
        Sandbox.create(base_url=plain.url, api_key=plain.api_key).kill()
        count0 = metric(warm, "sandbank_pool_handout_seconds_count")
        sum0 = metric(warm, "sandbank_pool_handout_seconds_sum")
        for _ in range(N_POOL):
            for srv, samples in ((warm, pooled), (plain, cold)):
                if srv is warm:
                    wait_for_pool(warm)
                t0 = time.perf_counter()
                sbx = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
                samples.append(time.perf_counter() - t0)
                sbx.kill()
        count = metric(warm, "sandbank_pool_handout_seconds_count") - count0
        total = metric(warm, "sandbank_pool_handout_seconds_sum") - sum0
    print(summary("create from the warm pool", pooled))
    print(summary("create cold (no pool)", cold))
    print(f"  server-side hand-out mean {total / max(1, count) * 1000:.2f} ms over {int(count)}")
    p50 = pct([s * 1000 for s in pooled], 50)
    verdict = "within" if p50 <= POOL_GOAL_MS else "over"
    print(f"pooled create p50 {p50:.2f} ms: {verdict} the {POOL_GOAL_MS:g} ms goal")


def main() -> None:
    if sys.argv[1:] == ["pool"]:
        pool_against_cold()
        return
    with running_server("lifecycle") as srv:
        creds = {"base_url": srv.url, "api_key": srv.api_key}
        with Sandbox.create(**creds) as sbx:
            pause_resume(sbx)
            stop_start(sbx)
            snapshot_id = snapshots(sbx, creds)
        create_from(snapshot_id, creds)
        with Snapshots(**creds) as client:
            client.delete(snapshot_id)
    pool_against_cold()


if __name__ == "__main__":
    main()
