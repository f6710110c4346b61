"""Terminals inside a running sandbox: background processes on a pseudo-terminal.

The agent owns them (``JobSpec.pty``), so a terminal outlives the connection
that drives it and the server itself; a client reconnects by pid and gets the
recent output replayed, then live output.

Who may drive one: an API key of the owning tenant, or the sandbox's terminal
token (what the browser terminal carries in its URL). The token is an HMAC of
the sandbox id under a key in the data dir: unguessable, nothing stored per
sandbox, valid across restarts, compared in constant time. A wrong token, like
a sandbox that does not exist or is another tenant's, is "not found".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sandbank.errors import (
    NotFound,
    ProcessNotFound,
    SandboxNotFound,
    Unauthorized,
    ValidationFailed,
)
from sandbank.runtime.base import JobInfo, JobSpec, OutputEvent, SandboxChannel
from sandbank.server.service.preview import load_secret
from sandbank.server.service.processes import argv_of, check_timeout
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.store.base import Store

#: The kernel's window size fields are 16 bits.
MAX_SIZE = 65535


@dataclass(frozen=True)
class PtyParams:
    cols: int = 80
    rows: int = 24
    #: Neither ``cmd`` nor ``command``: the user's login shell.
    cmd: list[str] | None = None
    command: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    tag: str | None = None
    #: Seconds; 0 means no limit.
    timeout: float = 0


def check_size(cols: int, rows: int) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if not 1 <= value <= MAX_SIZE:
            raise ValidationFailed(
                f"{name} must be between 1 and {MAX_SIZE}, got {value}", field=name
            )


@dataclass
class Session:
    """One client's connection to a terminal: its output from an offset (replay,
    then live, then an ``exit`` event), and its input and size."""

    info: JobInfo
    events: AsyncIterator[OutputEvent]
    channel: SandboxChannel
    sandbox_id: str

    async def send(self, data: bytes) -> None:
        await self.channel.send_stdin(self.info.pid, data)

    async def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        await self.channel.resize(self.info.pid, cols, rows)


class TerminalService:
    def __init__(self, sandboxes: SandboxService, store: Store, secret_file: Path) -> None:
        self._sandboxes = sandboxes
        self._store = store
        self._secret_file = secret_file
        self._secret: bytes | None = None

    # -- the browser terminal's credential ----------------------------------------------

    def token(self, sandbox_id: str) -> str:
        if self._secret is None:
            # Read on first use: the data dir exists only once the server started.
            self._secret = load_secret(self._secret_file)
        digest = hmac.new(self._secret, b"terminal:" + sandbox_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:24]).decode().rstrip("=")

    async def tenant_for_token(self, sandbox_id: str, token: str | None) -> str:
        """The tenant that owns the sandbox, if ``token`` is its terminal token."""
        if not token:
            raise Unauthorized("give an API key, or the sandbox's terminal token as ?token=")
        record = await self._store.get_sandbox(sandbox_id)
        valid = hmac.compare_digest(self.token(sandbox_id).encode(), token.encode())
        if record is None or not valid:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id)
        return record.tenant

    # -- terminals -------------------------------------------------------------------------

    async def _channel(
        self, tenant: str, sandbox_id: str, operation: str = "use terminals of"
    ) -> tuple[dict[str, str], SandboxChannel]:
        record, channel = await self._sandboxes.channel(tenant, sandbox_id, operation)
        return dict(record.env), channel

    @staticmethod
    def _not_found(sandbox_id: str, pid: int) -> ProcessNotFound:
        return ProcessNotFound(
            f"no terminal {pid} in sandbox {sandbox_id}: none was created with that pid, "
            "or it ended more than 10 minutes ago",
            sandbox_id=sandbox_id,
            pid=pid,
        )

    async def _get(self, channel: SandboxChannel, sandbox_id: str, pid: int) -> JobInfo:
        for job in await channel.jobs():
            if job.pid == pid and job.pty is not None:
                return job
        raise self._not_found(sandbox_id, pid)

    async def create(self, tenant: str, sandbox_id: str, params: PtyParams) -> JobInfo:
        check_size(params.cols, params.rows)
        check_timeout(params.timeout)
        argv: list[str] = []
        if params.cmd is not None or params.command is not None:
            argv = argv_of(params.cmd, params.command)
        env, channel = await self._channel(tenant, sandbox_id, "open a terminal in")
        spec = JobSpec(
            cmd=argv,
            env={**env, **params.env},
            cwd=params.cwd,
            user=params.user,
            tag=params.tag,
            timeout=params.timeout or None,
            stdin="open",
            pty=(params.cols, params.rows),
        )
        return await channel.start(spec)

    async def list(self, tenant: str, sandbox_id: str) -> list[JobInfo]:
        _, channel = await self._channel(tenant, sandbox_id, "list terminals of")
        jobs = [job for job in await channel.jobs() if job.pty is not None]
        return sorted(jobs, key=lambda job: job.started_at)

    async def get(self, tenant: str, sandbox_id: str, pid: int) -> JobInfo:
        _, channel = await self._channel(tenant, sandbox_id)
        return await self._get(channel, sandbox_id, pid)

    async def connect(self, tenant: str, sandbox_id: str, pid: int, offset: int = 0) -> Session:
        """A session on terminal ``pid`` replaying from ``offset``; raises before
        anything streams when there is no such terminal."""
        if offset < 0:
            raise ValidationFailed("offset must be >= 0", field="offset")
        _, channel = await self._channel(tenant, sandbox_id)
        info = await self._get(channel, sandbox_id, pid)
        return Session(info, channel.attach(pid, offset, True), channel, sandbox_id)

    async def send_input(self, tenant: str, sandbox_id: str, pid: int, data: bytes) -> None:
        _, channel = await self._channel(tenant, sandbox_id)
        await self._get(channel, sandbox_id, pid)
        await channel.send_stdin(pid, data)

    async def resize(self, tenant: str, sandbox_id: str, pid: int, cols: int, rows: int) -> None:
        check_size(cols, rows)
        _, channel = await self._channel(tenant, sandbox_id)
        await self._get(channel, sandbox_id, pid)
        await channel.resize(pid, cols, rows)

    async def wait(
        self, tenant: str, sandbox_id: str, pid: int, timeout: float | None = None
    ) -> JobInfo:
        check_timeout(timeout)
        _, channel = await self._channel(tenant, sandbox_id)
        await self._get(channel, sandbox_id, pid)
        return await channel.wait(pid, timeout or None)

    async def kill(self, tenant: str, sandbox_id: str, pid: int) -> None:
        """SIGKILL to every process of the terminal's session."""
        _, channel = await self._channel(tenant, sandbox_id)
        await self._get(channel, sandbox_id, pid)
        try:
            await channel.signal(pid, int(signals.SIGKILL))
        except NotFound:
            raise self._not_found(sandbox_id, pid) from None
