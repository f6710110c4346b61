"""Streaming exec: time from the request to the first stdout byte (SDK
``commands.run(on_stdout=...)`` and the WebSocket), and the throughput of a
process writing 100 MB to stdout, streamed to the client.

Baselines in the same run: `podman exec` of the same commands into a running
container of the same root filesystem, and the same 100 MB through a local
pipe on the host."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from _common import (
    PODMAN_IMAGE,
    PODMAN_LIMITS,
    ensure_podman_image,
    podman_available,
    running_server,
    summary,
)
from websockets.sync.client import connect

from sandbank import Sandbox

N = 100
PODMAN_N = 30
SIZE = 100 * 1000 * 1000
FIRST = "echo first; sleep 0.02"
# tr: printable bytes, so that the stream's JSON text is the bytes themselves.
WRITER = f"head -c {SIZE} /dev/zero | tr '\\0' a"
THROUGHPUT_RUNS = 3


def first_byte_sdk(sbx: Sandbox) -> float:
    first: list[float] = []
    t0 = time.perf_counter()
    sbx.commands.run(FIRST, on_stdout=lambda _: first or first.append(time.perf_counter()))
    return first[0] - t0


def first_byte_ws(url: str, key: str, sandbox_id: str) -> float:
    t0 = time.perf_counter()
    with connect(
        f"{url.replace('http://', 'ws://')}/v1/sandboxes/{sandbox_id}/exec/ws",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        ws.send(json.dumps({"command": FIRST}))
        while True:
            event = json.loads(ws.recv())
            if event["type"] == "stdout":
                elapsed = time.perf_counter() - t0
            if event["type"] == "exit":
                return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far: steadier than rates on a busy host."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_sdk(sbx: Sandbox) -> float:
    got = 0

    def count(text: str) -> None:
        nonlocal got
        got += len(text)

    t0 = time.perf_counter()
    result = sbx.commands.run(WRITER, on_stdout=count, timeout=600)
    elapsed = time.perf_counter() - t0
    assert got == SIZE and result.exit_code == 0, (got, result.exit_code)
    return SIZE / elapsed / 1e6


def throughput_local() -> float:
    t0 = time.perf_counter()
    with subprocess.Popen(["sh", "-c", WRITER], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        got = sum(len(chunk) for chunk in iter(lambda: proc.stdout.read(1 << 16), b""))  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t0
    assert got == SIZE
    return SIZE / elapsed / 1e6


def first_byte_podman(name: str) -> float:
    t0 = time.perf_counter()
    with subprocess.Popen(["podman", "exec", name, "sh", "-c", FIRST], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        p.stdout.read(1)
        elapsed = time.perf_counter() - t0
        p.stdout.read()
    return elapsed


def throughput_podman(name: str) -> float:
    t0 = time.perf_counter()
    with subprocess.Popen(
        ["podman", "exec", name, "sh", "-c", WRITER], stdout=subprocess.PIPE
    ) as p:
        assert p.stdout is not None
        got = sum(len(chunk) for chunk in iter(lambda: p.stdout.read(1 << 16), b""))  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t0
    assert got == SIZE
    return SIZE / elapsed / 1e6


def rates(name: str, samples: list[float]) -> str:
    best, worst = max(samples), min(samples)
    return f"{name:<44} n={len(samples):<4} best={best:8.1f} MB/s  worst={worst:8.1f} MB/s"


def main() -> None:
    with (
        running_server("stream") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
        for _ in range(5):
            first_byte_sdk(sbx)
            first_byte_ws(srv.url, srv.api_key, sbx.sandbox_id)
        sdk = [first_byte_sdk(sbx) for _ in range(N)]
        ws = [first_byte_ws(srv.url, srv.api_key, sbx.sandbox_id) for _ in range(N)]
        assert srv.proc is not None
        server_cpu, client_cpu = cpu_seconds(srv.proc.pid), time.process_time()
        ours = [throughput_sdk(sbx) for _ in range(THROUGHPUT_RUNS)]
        server_cpu = (cpu_seconds(srv.proc.pid) - server_cpu) / THROUGHPUT_RUNS
        client_cpu = (time.process_time() - client_cpu) / THROUGHPUT_RUNS
    print(summary("first stdout byte, SDK (NDJSON stream)", sdk))
    print(summary("first stdout byte, WebSocket", ws))
    print(rates("100 MB stdout streamed, SDK", ours))
    print(f"  CPU per 100 MB: server {server_cpu:.2f} s, SDK client {client_cpu:.2f} s")
    print(rates("100 MB through a local pipe (baseline)", [throughput_local() for _ in range(3)]))
    if not podman_available():
        print("podman not installed: no podman baseline (make bench installs it)")
        return
    ensure_podman_image()
    name = "sandbank-bench-stream"
    subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(
        [
            *("podman", "run", "-d", "--name", name, *PODMAN_LIMITS, "--network", "none"),
            *(PODMAN_IMAGE, "sleep", "infinity"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        base = [first_byte_podman(name) for _ in range(PODMAN_N)]
        base_rate = [throughput_podman(name) for _ in range(THROUGHPUT_RUNS)]
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, check=False)
    print(summary("first stdout byte, podman exec (baseline)", base))
    print(rates("100 MB stdout, podman exec (baseline)", base_rate))


if __name__ == "__main__":
    main()
