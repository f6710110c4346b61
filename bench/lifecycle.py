"""Pause / resume: 50 cycles on one sandbox with a process running inside;
prints the time of resume (the HTTP call, thaw included) and of the first
exec after it, against a goal of 10 ms for resume at p50."""

from __future__ import annotations

import time

from _common import pct, running_server, summary

from sandbank import Sandbox

N = 50
GOAL_MS = 10.0


def main() -> None:
    with (
        running_server("lifecycle") as srv,
        Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx,
    ):
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


if __name__ == "__main__":
    main()
