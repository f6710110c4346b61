"""Processes inside a running sandbox: streamed foreground commands and
background processes addressed by pid.

Both run on the channel's process primitives and are listed alike. A streamed
command is foreground: its output stream is tied to the connection to the
agent, and closing that stream before the exit (the client went away at any
moment, or the server died) kills its whole process group, in the agent. A
background process outlives every request and every server.
"""

from __future__ import annotations

import contextlib
import math
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from sandbank.errors import NotFound, ProcessNotFound, SandbankError, ValidationFailed
from sandbank.runtime.base import JobInfo, JobSpec, OutputEvent, SandboxChannel
from sandbank.server.service.params import ExecParams
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.shell import command_argv


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[OutputEvent]) -> AsyncIterator[None]:
    """Close an event stream (and the connection behind it) when done with it."""
    try:
        yield
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True)
class StartParams:
    cmd: list[str] | None = None
    command: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    tag: str | None = None
    #: Seconds; 0 means no limit.
    timeout: float = 0
    stdin: Literal["none", "open"] = "none"
    stdin_data: bytes | None = None
    #: Bytes kept of each stream; None: the server's ``process_max_output``.
    max_output: int | None = None


@dataclass(frozen=True)
class Started:
    """A foreground command that has started: its pid, then its events.
    ``close()`` before the ``exit`` event kills it (so does dropping it)."""

    info: JobInfo
    events: AsyncIterator[OutputEvent]

    async def close(self) -> None:
        close = getattr(self.events, "aclose", None)
        if close is not None:
            await close()


def argv_of(cmd: list[str] | None, command: str | None) -> list[str]:
    if cmd is not None:
        if not cmd:
            raise ValidationFailed("cmd must not be empty", field="cmd")
        return list(cmd)
    if command is not None:
        return command_argv(command)
    raise ValidationFailed("give cmd (an argv list) or command (a shell string)")


def check_timeout(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise ValidationFailed(
            f"timeout must be a number of seconds >= 0 (0 means no limit), got {seconds}",
            field="timeout",
        )


def signal_number(raw: int | str) -> int:
    """A signal by number (``15``, ``"15"``) or name (``"TERM"``, ``"SIGTERM"``)."""
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 < raw < signals.NSIG:
            return raw
    elif isinstance(raw, str) and raw.strip():
        name = raw.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        with contextlib.suppress(KeyError):
            return int(signals.Signals[name])
    raise ValidationFailed(
        f"unknown signal {raw!r}: give a number (1-{signals.NSIG - 1}) or a name such as "
        "TERM, KILL, INT, HUP",
        field="signal",
    )


class ProcessService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def _channel(
        self, tenant: str, sandbox_id: str, operation: str = "run processes in"
    ) -> tuple[dict[str, str], SandboxChannel]:
        record, channel = await self._sandboxes.channel(tenant, sandbox_id, operation)
        return dict(record.env), channel

    @staticmethod
    def _not_found(sandbox_id: str, pid: int) -> ProcessNotFound:
        return ProcessNotFound(
            f"no process {pid} in sandbox {sandbox_id}: none was started with that pid "
            "(background or streamed exec), or it ended more than 10 minutes ago",
            sandbox_id=sandbox_id,
            pid=pid,
        )

    def _known(self, sandbox_id: str, pid: int, exc: NotFound) -> SandbankError:
        if type(exc) is NotFound:
            return self._not_found(sandbox_id, pid)
        return exc

    # -- starting ------------------------------------------------------------------------

    async def start(self, tenant: str, sandbox_id: str, params: StartParams) -> JobInfo:
        check_timeout(params.timeout)
        if params.stdin == "open" and params.stdin_data is not None:
            raise ValidationFailed(
                "give stdin_data (input up front) or stdin 'open' (fed later), not both",
                field="stdin",
            )
        cap = self._sandboxes.limits.process_max_output
        if params.max_output is not None and not 0 <= params.max_output <= cap:
            raise ValidationFailed(
                f"max_output must be between 0 and {cap} bytes (the server's cap)",
                field="max_output",
            )
        env, channel = await self._channel(tenant, sandbox_id)
        spec = JobSpec(
            cmd=argv_of(params.cmd, params.command),
            env={**env, **params.env},
            cwd=params.cwd,
            user=params.user,
            tag=params.tag,
            timeout=params.timeout or None,
            stdin="bytes" if params.stdin_data is not None else params.stdin,
            stdin_data=params.stdin_data,
            max_output=cap if params.max_output is None else params.max_output,
            show_env=tuple(sorted(params.env)),
        )
        return await channel.start(spec)

    async def run_streamed(
        self, tenant: str, sandbox_id: str, params: ExecParams, *, open_stdin: bool = False
    ) -> Started:
        """Start a foreground command; its events follow as they happen.
        ``open_stdin`` keeps its stdin open for ``send_stdin`` (instead of
        ``params.stdin`` up front, or nothing)."""
        limits = self._sandboxes.limits
        check_timeout(params.timeout)
        if params.timeout > limits.exec_timeout_max:
            raise ValidationFailed(
                f"exec timeout must be at most {limits.exec_timeout_max} seconds",
                field="timeout",
            )
        if open_stdin and params.stdin is not None:
            raise ValidationFailed(
                "give stdin (input up front) or an open stdin, not both", field="stdin"
            )
        env, channel = await self._channel(tenant, sandbox_id, "exec in")
        spec = JobSpec(
            cmd=argv_of(params.cmd, params.command),
            env={**env, **params.env},
            cwd=params.cwd,
            user=params.user,
            timeout=params.timeout or None,
            stdin="open" if open_stdin else "none" if params.stdin is None else "bytes",
            stdin_data=params.stdin,
            max_output=limits.process_max_output,
            show_env=tuple(sorted(params.env)),
        )
        events = channel.run(spec)
        try:
            first = await anext(aiter(events))
        except StopAsyncIteration:
            first = None
        if first is None or first.kind != "start" or first.info is None:
            await closing_now(events)
            raise SandbankError("the sandbox did not report the start of the command")
        return Started(first.info, events)

    # -- background processes ------------------------------------------------------------

    async def list(
        self, tenant: str, sandbox_id: str, running: bool | None = None
    ) -> list[JobInfo]:
        _, channel = await self._channel(tenant, sandbox_id, "list processes of")
        jobs = await channel.jobs()
        if running is not None:
            jobs = [job for job in jobs if job.running == running]
        return sorted(jobs, key=lambda job: job.started_at)

    async def get(self, tenant: str, sandbox_id: str, pid: int) -> JobInfo:
        _, channel = await self._channel(tenant, sandbox_id, "read processes of")
        return await self._get(channel, sandbox_id, pid)

    async def _get(self, channel: SandboxChannel, sandbox_id: str, pid: int) -> JobInfo:
        for job in await channel.jobs():
            if job.pid == pid:
                return job
        raise self._not_found(sandbox_id, pid)

    async def output(
        self, tenant: str, sandbox_id: str, pid: int, offset: int = 0, follow: bool = False
    ) -> AsyncIterator[OutputEvent]:
        """The process's output from ``offset``; raises before streaming when the
        process does not exist."""
        if offset < 0:
            raise ValidationFailed("offset must be >= 0", field="offset")
        _, channel = await self._channel(tenant, sandbox_id, "read processes of")
        await self._get(channel, sandbox_id, pid)
        return channel.attach(pid, offset, follow)

    async def wait(
        self, tenant: str, sandbox_id: str, pid: int, timeout: float | None = None
    ) -> JobInfo:
        check_timeout(timeout)
        _, channel = await self._channel(tenant, sandbox_id, "wait for processes of")
        try:
            return await channel.wait(pid, timeout or None)
        except NotFound as exc:
            raise self._known(sandbox_id, pid, exc) from None

    async def send_stdin(
        self, tenant: str, sandbox_id: str, pid: int, data: bytes, close: bool = False
    ) -> None:
        _, channel = await self._channel(tenant, sandbox_id, "write to processes of")
        try:
            await channel.send_stdin(pid, data, close)
        except NotFound as exc:
            raise self._known(sandbox_id, pid, exc) from None

    async def signal(self, tenant: str, sandbox_id: str, pid: int, sig: int | str) -> int:
        number = signal_number(sig)
        _, channel = await self._channel(tenant, sandbox_id, "signal processes of")
        try:
            await channel.signal(pid, number)
        except NotFound as exc:
            raise self._known(sandbox_id, pid, exc) from None
        return number

    async def kill(self, tenant: str, sandbox_id: str, pid: int) -> None:
        await self.signal(tenant, sandbox_id, pid, int(signals.SIGKILL))


async def closing_now(events: AsyncIterator[OutputEvent]) -> None:
    async with closing(events):
        pass
