"""Stop, start, restart and live changes of a sandbox (limits, idle policy).

A stop ends every process and frees the sandbox's memory, CPU, cgroup and
network, keeping only its disk image; a start makes the container again on
that image (same id and hostname, kept egress policy, a new address) and runs
the agent from scratch. Stopped sandboxes count against no quota; a start
checks the quota again, like a create.

These run under the sandbox's lock from ``SandboxService``; the ``*_locked``
forms are for callers that hold it already (restore).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbank.errors import SandbankError
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import SandboxSpec
from sandbank.server.service.idle import check_policy
from sandbank.server.service.lifecycle import (
    ACTIVE,
    HAS_DISK,
    SandboxState,
    require,
    sources_of,
)
from sandbank.server.service.params import CreateParams, is_hostname
from sandbank.server.service.policy import check_quota, check_resources
from sandbank.server.store.base import SandboxRecord, TenantUsage

if TYPE_CHECKING:
    from sandbank.server.service.sandboxes import SandboxService

log = logging.getLogger(__name__)

S = SandboxState

_RESTARTABLE = frozenset({S.RUNNING, S.PAUSED, S.STOPPED})


@dataclass(frozen=True)
class UpdateParams:
    """``PATCH /v1/sandboxes/{id}``: every field optional; None leaves it as it is."""

    vcpu: float | None = None
    memory_mb: int | None = None
    #: Seconds; 0 clears the idle timeout.
    idle_timeout: int | None = None
    on_timeout: str | None = None
    auto_resume: bool | None = None

    @property
    def resizes(self) -> bool:
        return self.vcpu is not None or self.memory_mb is not None


def hostname_of(record: SandboxRecord) -> str:
    return record.name if is_hostname(record.name) else f"sandbox-{record.id[:6]}"


class LifecycleOps:
    def __init__(self, service: SandboxService) -> None:
        self._svc = service

    async def apply_policy(self, record: SandboxRecord, params: CreateParams) -> SandboxRecord:
        """Store the idle policy a create asked for (checked before the create)."""
        if not (params.idle_timeout or params.on_timeout or params.auto_resume):
            return record
        policy = {
            "idle_timeout": params.idle_timeout or None,
            "on_timeout": params.on_timeout or "kill",
            "auto_resume": params.auto_resume,
        }
        return await self._svc._store.update_sandbox(record.id, policy) or record

    def idle_actions(self) -> dict[str, Callable[[SandboxRecord], Awaitable[object]]]:
        """What each ``on_timeout`` does (``idle.ON_TIMEOUT`` says in which states)."""
        svc = self._svc
        return {
            "kill": lambda r: svc._kill(r.id, "idle"),
            "pause": lambda r: svc.pause(r.tenant, r.id),
            "hibernate": lambda r: svc.checkpoints.hibernate(r.tenant, r.id),
        }

    def spec_of(self, record: SandboxRecord) -> SandboxSpec:
        """The spec a stopped sandbox starts from again: everything from its record."""
        return SandboxSpec(
            id=record.id,
            template=record.template,
            vcpu=record.vcpu,
            memory_mb=record.memory_mb,
            disk_gb=record.disk_gb,
            hostname=hostname_of(record),
            pids_limit=self._svc.limits.pids_limit,
            env=dict(record.env),
            network=NetworkPolicy.from_dict(record.network),
        )

    # -- stop / start / restart --------------------------------------------------------

    async def stop(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Stop a running or paused sandbox; stopping a stopped one changes nothing."""
        async with self._svc._lock(sandbox_id):
            return await self.stop_locked(await self._svc.get(tenant, sandbox_id))

    async def stop_locked(self, record: SandboxRecord) -> SandboxRecord:
        svc = self._svc
        if record.status == S.STOPPED:
            return record
        require(record.status, sources_of(S.STOPPING), "stop", record.id)
        await svc._store.update_sandbox(
            record.id,
            {"status": S.STOPPING, "updated_at": svc._clock()},
            only_from=sources_of(S.STOPPING),
        )
        try:
            await svc._runtime.stop_sandbox(record.id)
        except SandbankError as exc:
            await svc._store.update_sandbox(
                record.id,
                {"status": S.ERROR, "error": f"stop failed: {exc}", "updated_at": svc._clock()},
            )
            raise
        stopped = await svc._store.update_sandbox(
            record.id,
            {"status": S.STOPPED, "updated_at": svc._clock()},
            only_from=[S.STOPPING],
        )
        return stopped or record

    async def start(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Start a stopped sandbox; starting a running one changes nothing."""
        async with self._svc._lock(sandbox_id):
            return await self.start_locked(await self._svc.get(tenant, sandbox_id))

    async def start_locked(self, record: SandboxRecord) -> SandboxRecord:
        svc = self._svc
        if record.status == S.RUNNING:
            return record
        require(record.status, frozenset({S.STOPPED}), "start", record.id)
        async with svc._tenant_lock(record.tenant):
            override, usage = await svc._store.quota_and_usage(record.tenant, ACTIVE)
            check_quota(
                record.tenant, svc._quota.merged(override), usage, record.vcpu, record.memory_mb
            )
            await svc._store.update_sandbox(
                record.id,
                {"status": S.STARTING, "error": None, "updated_at": svc._clock()},
                only_from=[S.STOPPED],
            )
        try:
            async with svc._create_slots:
                await svc._runtime.start_sandbox(self.spec_of(record))
        except BaseException as exc:
            # The runtime left the disk as it was: the sandbox can be started again.
            await svc._store.update_sandbox(
                record.id,
                {
                    "status": S.STOPPED,
                    "error": f"start failed: {str(exc) or type(exc).__name__}",
                    "updated_at": svc._clock(),
                },
                only_from=[S.STARTING],
            )
            raise
        started = await svc._store.update_sandbox(
            record.id,
            {"status": S.RUNNING, "updated_at": svc._clock()},
            only_from=[S.STARTING],
        )
        svc.idle.touch(record.id)
        return started or record

    async def restart(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Stop (if it runs) and start: every process begins from scratch, the disk stays."""
        async with self._svc._lock(sandbox_id):
            record = await self._svc.get(tenant, sandbox_id)
            require(record.status, _RESTARTABLE, "restart", sandbox_id)
            return await self.start_locked(await self.stop_locked(record))

    async def disk_bytes(self, record: SandboxRecord) -> int | None:
        """Host bytes of the sandbox's disk image, where it has one."""
        if record.status not in HAS_DISK:
            return None
        return await self._svc._runtime.disk_bytes(record.id)

    # -- live changes --------------------------------------------------------------------

    async def update(self, tenant: str, sandbox_id: str, params: UpdateParams) -> SandboxRecord:
        """Resize (running or stopped) and/or change the idle policy (any live state)."""
        svc = self._svc
        changes: dict[str, object] = {}
        if params.idle_timeout is not None or params.on_timeout is not None:
            check_policy(svc.limits, params.idle_timeout, params.on_timeout)
        if params.idle_timeout is not None:
            changes["idle_timeout"] = params.idle_timeout or None
        if params.on_timeout is not None:
            changes["on_timeout"] = params.on_timeout
        if params.auto_resume is not None:
            changes["auto_resume"] = params.auto_resume
        async with svc._lock(sandbox_id):
            record = await svc.get(tenant, sandbox_id)
            if params.resizes:
                changes.update(await self._resize_locked(record, params))
            else:
                require(
                    record.status,
                    frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.CREATING}),
                    "change",
                    sandbox_id,
                )
            if not changes:
                return record
            changes["updated_at"] = svc._clock()
            updated = await svc._store.update_sandbox(sandbox_id, changes)
        return updated or await svc.get(tenant, sandbox_id)

    async def _resize_locked(
        self, record: SandboxRecord, params: UpdateParams
    ) -> dict[str, object]:
        svc = self._svc
        require(record.status, frozenset({S.RUNNING, S.STOPPED}), "resize", record.id)
        vcpu = record.vcpu if params.vcpu is None else params.vcpu
        memory_mb = record.memory_mb if params.memory_mb is None else params.memory_mb
        check_resources(svc.limits, vcpu, memory_mb, record.disk_gb)
        if record.status == S.RUNNING:
            async with svc._tenant_lock(record.tenant):
                override, usage = await svc._store.quota_and_usage(record.tenant, ACTIVE)
                # The sandbox's own share is already in the usage: count it once, resized.
                without = TenantUsage(
                    sandboxes=usage.sandboxes - 1,
                    vcpu=usage.vcpu - record.vcpu,
                    memory_mb=usage.memory_mb - record.memory_mb,
                )
                check_quota(record.tenant, svc._quota.merged(override), without, vcpu, memory_mb)
                spec = dataclasses.replace(
                    self.spec_of(record), vcpu=vcpu, memory_mb=memory_mb, network=None
                )
                await svc._runtime.customize(spec)
        return {"vcpu": vcpu, "memory_mb": memory_mb}
