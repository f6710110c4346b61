"""The fake runtime's background processes, a mixin of ``FakeChannel``.

Kept apart from ``fake.py`` as the file tree is (``fake_files.py``): jobs are
held on the fake sandbox and follow the agent's rules (pids from 1000, output
kept for re-reading, stdin open/closed/pty, exit 128+N on signal N) closely
enough for the service's process and terminal code to be tested against them.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandbank.errors import Conflict, NotFound, SandboxUnavailable, Timeout
from sandbank.runtime.base import ExecResult, ExecSpec, JobInfo, JobSpec, OutputEvent

if TYPE_CHECKING:
    from sandbank.runtime.fake import FakeSandbox


def unwrap(cmd: list[str]) -> list[str]:
    """The words of ``bash -c``/``sh -c`` scripts, else ``cmd`` itself."""
    if cmd[:2] in (["/bin/bash", "-c"], ["/bin/sh", "-c"]):
        return shlex.split(cmd[2])
    return cmd


def _signal_name(sig: str) -> str:
    name = sig.upper()
    return name if name.startswith("SIG") else f"SIG{name}"


@dataclass
class _FakeJob:
    spec: JobSpec
    pid: int
    started_at: float
    stdin: str = "none"
    output: list[tuple[str, bytes]] = field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    ended_at: float | None = None
    pty: tuple[int, int] | None = None
    kind: str = "background"

    def end(self, code: int, signo: int | None = None) -> None:
        self.exit_code, self.signal, self.ended_at = code, signo, time.time()

    def check_running(self, what: str) -> None:
        if self.exit_code is not None:
            raise Conflict(
                f"process {self.pid} has already exited with code {self.exit_code}: cannot {what}",
                pid=self.pid,
                exit_code=self.exit_code,
            )

    def info(self) -> JobInfo:
        return JobInfo(
            pid=self.pid,
            tag=self.spec.tag,
            cmd=list(self.spec.cmd),
            cwd=self.spec.cwd or "/home/user",
            env_keys=sorted(self.spec.env),
            user=self.spec.user,
            started_at=self.started_at,
            running=self.exit_code is None,
            ended_at=self.ended_at,
            exit_code=self.exit_code,
            signal=self.signal,
            stdin=self.stdin,
            output_bytes=sum(len(data) for _, data in self.output),
            pty=self.pty,
            env={key: self.spec.env[key] for key in self.spec.show_env if key in self.spec.env},
            kind=self.kind,
        )


class FakeJobs:
    """Mixed into FakeChannel: ``_box`` is the fake sandbox it works on; what
    is not a job it knows runs through ``exec``."""

    _box: FakeSandbox

    async def exec(self, spec: ExecSpec) -> ExecResult:
        raise NotImplementedError

    # -- background processes: ``cat`` with open stdin echoes what it is fed and
    # ``sleep`` runs until signalled; anything else runs through ``exec`` at once.

    def _jobs(self) -> dict[int, _FakeJob]:
        # Kept on the sandbox, so that every channel to it sees the same processes.
        jobs: dict[int, _FakeJob] = self._box.__dict__.setdefault("_fake_jobs", {})
        return jobs

    def _job(self, pid: int) -> _FakeJob:
        job = self._jobs().get(pid)
        if job is None:
            raise NotFound(f"no process {pid} was started through the agent", pid=pid)
        return job

    async def start(self, spec: JobSpec) -> JobInfo:
        if not self._box.alive:
            raise SandboxUnavailable("sandbox is not running")
        pid = 1000 + len(self._jobs())
        job = _FakeJob(spec, pid, time.time(), stdin=spec.stdin)
        self._jobs()[pid] = job
        name = (unwrap(spec.cmd) or [""])[0]
        if spec.pty is not None:
            # A terminal that echoes its input, as a tty in cooked mode would.
            job.stdin, job.pty = "pty", spec.pty
            return job.info()
        if not (name == "sleep" or (name == "cat" and spec.stdin == "open")):
            stdin = spec.stdin_data if spec.stdin == "bytes" else None
            result = await self.exec(ExecSpec(cmd=spec.cmd, env=spec.env, stdin=stdin))
            job.output += [("stdout", result.stdout), ("stderr", result.stderr)]
            job.end(result.exit_code)
        return job.info()

    async def run(self, spec: JobSpec) -> AsyncIterator[OutputEvent]:
        info = await self.start(spec)
        job = self._job(info.pid)
        job.kind = "foreground"
        yield OutputEvent(kind="start", info=job.info())
        ended = False
        try:
            async for event in self.attach(info.pid):
                ended = event.kind == "exit"
                yield event
        finally:
            if not ended:  # the reader left: the process goes with it
                job.end(128 + 9, 9)

    async def jobs(self) -> list[JobInfo]:
        return [job.info() for job in self._jobs().values()]

    async def attach(
        self, pid: int, offset: int = 0, follow: bool = True
    ) -> AsyncIterator[OutputEvent]:
        job = self._job(pid)
        sent = 0
        at = 0
        while True:
            for kind, data in job.output[sent:]:
                if at + len(data) > offset and data:
                    cut = data[max(0, offset - at) :]
                    yield OutputEvent(kind=kind, data=cut, offset=max(at, offset))  # type: ignore[arg-type]
                at += len(data)
            sent = len(job.output)
            if job.exit_code is not None:
                yield OutputEvent(kind="exit", offset=max(at, offset), info=job.info())
                return
            if not follow:
                return
            await asyncio.sleep(0.005)

    async def wait(self, pid: int, timeout: float | None = None) -> JobInfo:
        job = self._job(pid)
        deadline = None if not timeout else time.monotonic() + timeout
        while job.exit_code is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"process {pid} is still running after {timeout:g}s", pid=pid)
            await asyncio.sleep(0.005)
        return job.info()

    async def send_stdin(self, pid: int, data: bytes, close: bool = False) -> None:
        job = self._job(pid)
        job.check_running("write to its stdin")
        if job.stdin not in ("open", "pty"):
            raise Conflict(f"the stdin of process {pid} is {job.stdin}", pid=pid)
        job.output.append(("stdout", data))
        if close and job.stdin == "open":
            job.stdin = "closed"
            job.end(0)

    async def signal(self, pid: int, sig: int | str) -> None:
        job = self._job(pid)
        job.check_running("signal it")
        number = sig if isinstance(sig, int) else int(signal.Signals[_signal_name(sig)])
        job.end(128 + number, number)

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        job = self._job(pid)
        job.check_running("resize its terminal")
        if job.pty is None:
            raise Conflict(f"process {pid} has no terminal to resize", pid=pid)
        job.pty = (cols, rows)
