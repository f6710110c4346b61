"""Terminals: keystroke echo round trip over the WebSocket (client -> server ->
agent -> pty -> back), the time to open a terminal, and output throughput.
Baseline for the echo: the same round trip on a local pty of this host (the
floor: what the line discipline alone costs)."""

from __future__ import annotations

import os
import select
import time

from _common import running_server, summary

from sandbank import PtyHandle, Sandbox

N = 200
MIB = 32


def local_echo() -> list[float]:
    master, slave = os.openpty()
    try:
        samples = []
        for _ in range(N):
            t0 = time.perf_counter()
            os.write(master, b"x")
            select.select([master], [], [])
            os.read(master, 64)
            samples.append(time.perf_counter() - t0)
        return samples
    finally:
        os.close(master)
        os.close(slave)


def until(handle: PtyHandle, needle: bytes) -> None:
    seen = b""
    for chunk in handle:
        seen += chunk
        if needle in seen:
            return
    raise RuntimeError(f"the terminal ended before {needle!r}")


def main() -> None:
    with (
        running_server("pty") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
        opens = []
        for _ in range(20):
            t0 = time.perf_counter()
            handle = sbx.pty.create(cmd=["cat"])
            opens.append(time.perf_counter() - t0)
            handle.kill()
            handle.disconnect()
        cat = sbx.pty.create(cmd=["cat"])
        for _ in range(20):
            cat.send_input(b"w")
            until(cat, b"w")
        echo = []
        for _ in range(N):
            t0 = time.perf_counter()
            cat.send_input(b"x")
            until(cat, b"x")
            echo.append(time.perf_counter() - t0)
        cat.kill()
        cat.disconnect()
        flood = sbx.pty.create(cmd=["sh", "-c", f"sleep 0.2; head -c {MIB}M /dev/zero; echo END"])
        got = 0
        t0 = time.perf_counter()
        for chunk in flood:
            got += len(chunk)
        elapsed = time.perf_counter() - t0 - 0.2
        flood.disconnect()
    print(summary("pty.create + connect (ready)", opens))
    print(summary("keystroke echo over the WebSocket", echo))
    base = local_echo()
    print(summary("keystroke echo on a local pty (floor)", base))
    print(f"output throughput: {got / elapsed / 2**20:.1f} MiB/s ({got / 2**20:.1f} MiB)")
    ours, floor = sorted(echo)[N // 2], sorted(base)[N // 2]
    print(f"echo p50 over the floor: +{(ours - floor) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
