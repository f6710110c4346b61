"""Time to interactive: SDK create -> output of the first `commands.run("true")`,
50 sequential, against `podman run --rm` of the same root filesystem."""

from __future__ import annotations

import subprocess
import time

from _common import (
    PODMAN_IMAGE,
    PODMAN_LIMITS,
    ensure_podman_image,
    podman_available,
    running_server,
    summary,
)

from sandbank import Sandbox

N = 50
PODMAN_N = 20


def main() -> None:
    with running_server("tti") as srv:
        warm = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        warm.kill()
        samples = []
        for _ in range(N):
            t0 = time.perf_counter()
            sbx = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
            sbx.commands.run("true")
            samples.append(time.perf_counter() - t0)
            sbx.kill()
    print(summary("sandbank create -> first run('true')", samples))
    ours = sorted(samples)[len(samples) // 2]
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
    theirs = sorted(base)[len(base) // 2]
    print(f"ratio (podman p50 / sandbank p50): {theirs / ours:.1f}x")
    print(
        "note: podman runs with nofile/nproc lowered to 1024 and no --memory: its default "
        "rlimits (and --ulimit host) fail on this host, which lacks CAP_SYS_RESOURCE; "
        "sandbank applies its cpu/memory/pids/disk limits and a user namespace."
    )


if __name__ == "__main__":
    main()
