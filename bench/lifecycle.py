"""Lifecycle timings on one server, in one run:

- pause / resume: 50 cycles with a process running inside (goal: resume p50
  within 10 ms);
- stop -> start: 15 cycles (start includes the agent answering), and the first
  exec after start;
- snapshots of a sandbox holding 64 MB of data: time and host size, with the
  copy method the data dir allows;
- create from a snapshot against create from the template (cold, no warm pool),
  15 of each, interleaved.
"""

from __future__ import annotations

import time

from _common import pct, running_server, summary

from sandbank import Sandbox, Snapshots

N = 50
N_STOP = 15
N_SNAP = 10
N_CREATE = 15
GOAL_MS = 10.0
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


def main() -> None:
    with running_server("lifecycle") as srv:
        creds = {"base_url": srv.url, "api_key": srv.api_key}
        with Sandbox.create(**creds) as sbx:
            pause_resume(sbx)
            stop_start(sbx)
            snapshot_id = snapshots(sbx, creds)
        create_from(snapshot_id, creds)
        with Snapshots(**creds) as client:
            client.delete(snapshot_id)


if __name__ == "__main__":
    main()
