"""Exec round trip: 200 x commands.run("true") on one sandbox, against
`podman exec` into a running container of the same root filesystem."""

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

N = 200
PODMAN_N = 30


def main() -> None:
    with (
        running_server("exec") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
        for _ in range(10):
            sbx.commands.run("true")
        samples = []
        for _ in range(N):
            t0 = time.perf_counter()
            sbx.commands.run("true")
            samples.append(time.perf_counter() - t0)
        argv_samples = []
        for _ in range(N):
            t0 = time.perf_counter()
            sbx.commands.run(["true"])
            argv_samples.append(time.perf_counter() - t0)
    print(summary("sandbank commands.run('true') (shell string)", samples))
    print(summary("sandbank commands.run(['true']) (argv)", argv_samples))
    ours = sorted(samples)[len(samples) // 2]
    if not podman_available():
        print("podman not installed: no baseline (make bench installs it)")
        return
    ensure_podman_image()
    name = "sandbank-bench-exec"
    subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(
        [
            "podman",
            "run",
            "-d",
            "--name",
            name,
            *PODMAN_LIMITS,
            "--network",
            "none",
            PODMAN_IMAGE,
            "sleep",
            "infinity",
        ],
        check=True,
        capture_output=True,
    )
    try:
        base = []
        for _ in range(PODMAN_N):
            t0 = time.perf_counter()
            subprocess.run(["podman", "exec", name, "true"], check=True)
            base.append(time.perf_counter() - t0)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, check=False)
    print(summary("podman exec", base))
    print(f"ratio (podman p50 / sandbank p50): {sorted(base)[len(base) // 2] / ours:.1f}x")


if __name__ == "__main__":
    main()
