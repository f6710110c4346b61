"""Time to interactive: SDK create -> output of the first `commands.run("true")`,
50 sequential, served by the warm pool and started cold, against `podman run
--rm` of the same root filesystem.

The pool is measured twice on one server: refilled (after each first command
the bench waits until the pool is full again, so every create finds it full:
the latency of a hit), and back to back (no waiting: the one-at-a-time refill
has to keep up, and the hit rate shows whether it did)."""

from __future__ import annotations

import subprocess
import time

from _common import (
    PODMAN_IMAGE,
    PODMAN_LIMITS,
    ServerProcess,
    ensure_podman_image,
    metric,
    pct,
    podman_available,
    running_server,
    summary,
)

from sandbank import Sandbox

N = 50
PODMAN_N = 20
POOL_SIZE = 4


def wait_for_pool(srv: ServerProcess, size: int = POOL_SIZE, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(srv, "sandbank_pool_size", template="base") < size:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not refill to {size} within {timeout} s")
        time.sleep(0.01)


def time_to_interactive(srv: ServerProcess, *, refilled: bool) -> list[float]:
    samples = []
    for _ in range(N):
        t0 = time.perf_counter()
        sbx = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        sbx.commands.run("true")
        samples.append(time.perf_counter() - t0)
        if refilled:
            # Before the kill, so that the next create finds a full pool.
            wait_for_pool(srv)
        sbx.kill()
    return samples


def pool_counts(srv: ServerProcess) -> tuple[float, float]:
    hits = metric(srv, "sandbank_pool_hits_total", template="base")
    misses = sum(
        metric(srv, "sandbank_pool_misses_total", template="base", reason=reason)
        for reason in ("empty", "failed", "not_pooled")
    )
    return hits, misses


def hit_rate(before: tuple[float, float], after: tuple[float, float]) -> str:
    hits, misses = after[0] - before[0], after[1] - before[1]
    return f"{int(hits)} hits / {int(hits + misses)} creates ({hits / max(1, hits + misses):.0%})"


def main() -> None:
    with running_server("tti-pool", SANDBANK_POOL_SIZE=str(POOL_SIZE)) as srv:
        wait_for_pool(srv)
        Sandbox.create(base_url=srv.url, api_key=srv.api_key).kill()
        wait_for_pool(srv)
        start = pool_counts(srv)
        pooled = time_to_interactive(srv, refilled=True)
        mid = pool_counts(srv)
        handout_count = metric(srv, "sandbank_pool_handout_seconds_count")
        handout_sum = metric(srv, "sandbank_pool_handout_seconds_sum")
        wait_for_pool(srv)
        back_to_back = time_to_interactive(srv, refilled=False)
        end = pool_counts(srv)
    with running_server("tti") as srv:
        Sandbox.create(base_url=srv.url, api_key=srv.api_key).kill()
        cold = time_to_interactive(srv, refilled=False)

    print(f"warm pool of {POOL_SIZE}; each pooled create (refilled) starts with a full pool:")
    print("the bench waits for the refill after each run('true') and before the kill")
    print(summary("sandbank pooled (refilled) -> run('true')", pooled))
    print(f"  {hit_rate(start, mid)}; server-side hand-out mean ", end="")
    print(f"{handout_sum / max(1, handout_count) * 1000:.2f} ms (quota, claim, limits, hostname)")
    print(summary("sandbank pooled back to back", back_to_back))
    print(f"  {hit_rate(mid, end)}")
    print(summary("sandbank cold (no pool)", cold))
    ours, cold_p50 = pct(pooled, 50), pct(cold, 50)
    print(f"ratio (cold p50 / pooled p50): {cold_p50 / ours:.1f}x")
    if not podman_available():
        print("podman not installed: no baseline (make bench installs it)")
        return
    ensure_podman_image()
    base = []
    for _ in range(PODMAN_N):
        t0 = time.perf_counter()
        subprocess.run(
            [
                "podman",
                "run",
                "--rm",
                *PODMAN_LIMITS,
                "--network",
                "none",
                PODMAN_IMAGE,
                "true",
            ],
            check=True,
        )
        base.append(time.perf_counter() - t0)
    print(summary("podman run --rm (no limits, see note)", base))
    theirs = pct(base, 50)
    print(f"ratio (podman p50 / sandbank pooled p50): {theirs / ours:.1f}x")
    print(f"ratio (podman p50 / sandbank back-to-back p50): {theirs / pct(back_to_back, 50):.1f}x")
    print(f"ratio (podman p50 / sandbank cold p50): {theirs / cold_p50:.1f}x")
    print(
        "note: podman runs with nofile/nproc lowered to 1024 and no --memory: its default "
        "rlimits (and --ulimit host) fail on this host, which lacks CAP_SYS_RESOURCE; "
        "sandbank applies its cpu/memory/pids/disk limits and a user namespace."
    )


if __name__ == "__main__":
    main()
