"""What the sandbox service does with a sandbox once it exists, short of
killing it: its deadline and egress policy, pause and resume, exec, and the
channels other services work through.

A mixin base of ``SandboxService`` (kept apart so create, kill and the state
that locks them stay readable in ``sandboxes.py``); it uses the service's
store, runtime, clock and locks, declared here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from sandbank.errors import ValidationFailed
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    Runtime,
    SandboxChannel,
    SandboxUsage,
    TemplateInfo,
)
from sandbank.runtime.filetree import FileTreeChannel
from sandbank.server.service.activity import ActiveChannel, ActiveTreeChannel
from sandbank.server.service.checkpoints import CheckpointService
from sandbank.server.service.idle import IdleTracker
from sandbank.server.service.lifecycle import SandboxState, require
from sandbank.server.service.params import ExecParams
from sandbank.server.service.policy import Limits, check_timeout
from sandbank.server.service.shell import command_argv
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import SandboxRecord, Store

S = SandboxState


class SandboxOperations:
    _store: Store
    _runtime: Runtime
    _limits: Limits
    _clock: Callable[[], datetime]
    _telemetry: Telemetry
    idle: IdleTracker
    checkpoints: CheckpointService

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        raise NotImplementedError

    async def get(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        raise NotImplementedError

    def _channel(self, sandbox_id: str) -> SandboxChannel:
        inner = self._runtime.channel(sandbox_id)
        if isinstance(inner, FileTreeChannel):
            return ActiveTreeChannel(inner, self.idle, sandbox_id)
        return ActiveChannel(inner, self.idle, sandbox_id)

    async def _running(
        self, tenant: str, sandbox_id: str, operation: str, *, resume: bool = True
    ) -> SandboxRecord:
        """``resume``: resume a paused or wake a hibernated sandbox with
        ``auto_resume`` (never when the caller holds the sandbox's lock, which
        both take)."""
        record = await self.get(tenant, sandbox_id)
        if resume and record.auto_resume:
            if record.status == S.PAUSED:
                record = await self.resume(tenant, sandbox_id)
            elif record.status == S.HIBERNATED:
                record = await self.checkpoints.wake(tenant, sandbox_id)
        require(record.status, frozenset({S.RUNNING}), operation, sandbox_id)
        return record

    # -- deadline and network -------------------------------------------------------

    async def set_timeout(self, tenant: str, sandbox_id: str, seconds: int) -> SandboxRecord:
        check_timeout(self._limits, seconds)
        record = await self.get(tenant, sandbox_id)
        require(
            record.status,
            frozenset({S.CREATING, S.RUNNING, S.PAUSED, S.STOPPED, S.HIBERNATED}),
            "set the timeout of",
            sandbox_id,
        )
        now = self._clock()
        updated = await self._store.update_sandbox(
            sandbox_id,
            {"expires_at": now + timedelta(seconds=seconds), "updated_at": now},
            only_from=[S.CREATING, S.RUNNING, S.PAUSED, S.STOPPED, S.HIBERNATED],
        )
        if updated is None:
            return await self.get(tenant, sandbox_id)
        return updated

    async def set_network(
        self, tenant: str, sandbox_id: str, policy: NetworkPolicy
    ) -> SandboxRecord:
        """Replace the egress policy of a running sandbox; stored once in force."""
        await self._running(tenant, sandbox_id, "change the network of")
        async with self._lock(sandbox_id):
            await self._running(tenant, sandbox_id, "change the network of", resume=False)
            await self._runtime.set_network_policy(sandbox_id, policy)
            updated = await self._store.update_sandbox(
                sandbox_id,
                {"network": policy.to_dict(), "updated_at": self._clock()},
                only_from=[S.RUNNING],
            )
        return updated or await self.get(tenant, sandbox_id)

    # -- pause / resume ----------------------------------------------------------------

    async def pause(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Freeze a running sandbox; pausing a paused one changes nothing."""
        async with self._lock(sandbox_id):
            record = await self.get(tenant, sandbox_id)
            if record.status == S.PAUSED:
                return record
            require(record.status, frozenset({S.RUNNING}), "pause", sandbox_id)
            await self._runtime.pause(sandbox_id)
            updated = await self._store.update_sandbox(
                sandbox_id,
                {"status": S.PAUSED, "updated_at": self._clock()},
                only_from=[S.RUNNING],
            )
        return updated or await self.get(tenant, sandbox_id)

    async def resume(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Thaw a paused sandbox; resuming a running one changes nothing."""
        async with self._lock(sandbox_id):
            record = await self.get(tenant, sandbox_id)
            if record.status == S.RUNNING:
                return record
            require(record.status, frozenset({S.PAUSED}), "resume", sandbox_id)
            await self._runtime.resume(sandbox_id)
            updated = await self._store.update_sandbox(
                sandbox_id,
                {"status": S.RUNNING, "updated_at": self._clock()},
                only_from=[S.PAUSED],
            )
        return updated or await self.get(tenant, sandbox_id)

    # -- inside the sandbox -------------------------------------------------------------

    async def exec(self, tenant: str, sandbox_id: str, params: ExecParams) -> ExecResult:
        record = await self._running(tenant, sandbox_id, "exec in")
        if params.timeout > self._limits.exec_timeout_max:
            raise ValidationFailed(
                f"exec timeout must be at most {self._limits.exec_timeout_max} seconds",
                field="timeout",
            )
        if params.cmd is not None:
            argv = list(params.cmd)
        elif params.command is not None:
            argv = command_argv(params.command)
        else:
            raise ValidationFailed("give cmd (an argv list) or command (a shell string)")
        spec = ExecSpec(
            cmd=argv,
            env={**record.env, **params.env},
            cwd=params.cwd,
            user=params.user,
            timeout=params.timeout or None,
            stdin=params.stdin,
            max_output=self._limits.exec_max_output,
        )
        result = await self._channel(sandbox_id).exec(spec)
        self._telemetry.executed(result.duration_ms / 1000)
        return result

    async def channel(
        self, tenant: str, sandbox_id: str, operation: str
    ) -> tuple[SandboxRecord, SandboxChannel]:
        """A running sandbox's record and channel, for operations inside it."""
        record = await self._running(tenant, sandbox_id, operation)
        return record, self._channel(sandbox_id)

    @property
    def limits(self) -> Limits:
        return self._limits

    async def files(self, tenant: str, sandbox_id: str) -> SandboxChannel:
        await self._running(tenant, sandbox_id, "access files of")
        return self._channel(sandbox_id)

    async def templates(self) -> list[TemplateInfo]:
        return await self._runtime.templates()

    async def usage(self, tenant: str, sandbox_id: str) -> SandboxUsage:
        await self._running(tenant, sandbox_id, "read metrics of")
        return await self._runtime.usage(sandbox_id)
