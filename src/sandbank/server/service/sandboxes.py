"""Sandbox lifecycle: create, look up, list, kill, exec, files, deadlines.

Every state change goes through the store with a compare-and-set on the
status, and every runtime call that changes a sandbox runs under that
sandbox's lock, so a kill racing a create waits for it instead of leaking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sandbank.errors import (
    SandbankError,
    SandboxNotFound,
    ValidationFailed,
)
from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    Runtime,
    SandboxChannel,
    SandboxSpec,
    SandboxUsage,
    TemplateInfo,
)
from sandbank.server.service.lifecycle import (
    ACTIVE,
    VISIBLE,
    SandboxState,
    require,
    sources_of,
)
from sandbank.server.service.params import CreateParams, ExecParams, is_hostname, new_sandbox_id
from sandbank.server.service.policy import (
    Limits,
    Quota,
    check_quota,
    check_region,
    check_resources,
    check_timeout,
)
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import Page, SandboxRecord, Store

log = logging.getLogger(__name__)

S = SandboxState


class SandboxService:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        limits: Limits,
        quota: Quota,
        clock: Callable[[], datetime],
        telemetry: Telemetry,
        create_concurrency: int = 8,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._limits = limits
        self._quota = quota
        self._clock = clock
        self._telemetry = telemetry
        self._locks: dict[str, asyncio.Lock] = {}
        self._tenant_locks: dict[str, asyncio.Lock] = {}
        # runc, mkfs and mounts contend for the same few cores; queueing beats thrashing.
        self._create_slots = asyncio.Semaphore(create_concurrency)

    # -- helpers -------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _tenant_lock(self, tenant: str) -> asyncio.Lock:
        return self._tenant_locks.setdefault(tenant, asyncio.Lock())

    async def _owned(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """The tenant's sandbox, any state; another tenant's is 'not found'."""
        record = await self._store.get_sandbox(sandbox_id)
        if record is None or record.tenant != tenant:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id)
        return record

    @staticmethod
    def _gone(record: SandboxRecord) -> SandboxNotFound:
        when = record.killed_at.isoformat() if record.killed_at else "an earlier time"
        cause = (
            "was killed by its timeout"
            if record.kill_reason == "timeout"
            else f"was killed ({record.kill_reason or 'deleted'})"
        )
        return SandboxNotFound(
            f"sandbox {record.id} {cause} at {when}; create a new one",
            sandbox_id=record.id,
            killed=True,
            kill_reason=record.kill_reason,
        )

    async def get(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        record = await self._owned(tenant, sandbox_id)
        if record.status == S.KILLED:
            raise self._gone(record)
        return record

    async def _running(self, tenant: str, sandbox_id: str, operation: str) -> SandboxRecord:
        record = await self.get(tenant, sandbox_id)
        require(record.status, frozenset({S.RUNNING}), operation, sandbox_id)
        return record

    # -- create ----------------------------------------------------------------------

    async def create(self, tenant: str, params: CreateParams) -> SandboxRecord:
        lim = self._limits
        vcpu = lim.vcpu_default if params.vcpu is None else params.vcpu
        memory_mb = lim.memory_mb_default if params.memory_mb is None else params.memory_mb
        disk_gb = lim.disk_gb_default if params.disk_gb is None else params.disk_gb
        region = params.region or lim.default_region
        timeout = lim.default_timeout if params.timeout is None else params.timeout
        check_resources(lim, vcpu, memory_mb, disk_gb)
        check_region(lim, region)
        check_timeout(lim, timeout)
        await self._runtime.ensure_template(params.template)

        now = self._clock()
        sandbox_id = new_sandbox_id()
        record = SandboxRecord(
            id=sandbox_id,
            tenant=tenant,
            name=params.name or f"sandbox-{sandbox_id[:6]}",
            status=S.CREATING,
            template=params.template,
            vcpu=vcpu,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
            region=region,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=timeout),
            env=dict(params.env),
            metadata=dict(params.metadata),
        )
        async with self._tenant_lock(tenant):
            quota = self._quota.merged(await self._store.get_quota(tenant))
            usage = await self._store.usage(tenant, ACTIVE)
            check_quota(tenant, quota, usage, vcpu, memory_mb)
            await self._store.insert_sandbox(record)

        spec = SandboxSpec(
            id=sandbox_id,
            template=params.template,
            vcpu=vcpu,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
            hostname=record.name if is_hostname(record.name) else f"sandbox-{sandbox_id[:6]}",
            pids_limit=lim.pids_limit,
            env=dict(params.env),
        )
        async with self._lock(sandbox_id):
            started = self._clock()
            try:
                async with self._create_slots:
                    await self._runtime.create(spec)
            except BaseException as exc:
                await self._fail(sandbox_id, exc)
                raise
            running = await self._store.update_sandbox(
                sandbox_id,
                {"status": S.RUNNING, "updated_at": self._clock()},
                only_from=[S.CREATING],
            )
        assert running is not None
        self._telemetry.created((self._clock() - started).total_seconds(), params.template)
        return running

    async def _fail(self, sandbox_id: str, exc: BaseException) -> None:
        log.warning("create of %s failed: %s", sandbox_id, exc)
        self._telemetry.failed()
        try:
            await self._runtime.destroy(sandbox_id)
        except SandbankError as cleanup:
            log.error("cleanup after failed create of %s: %s", sandbox_id, cleanup)
        await self._store.update_sandbox(
            sandbox_id,
            {
                "status": S.ERROR,
                "error": str(exc) or type(exc).__name__,
                "updated_at": self._clock(),
            },
        )

    # -- read ------------------------------------------------------------------------

    async def list_sandboxes(
        self,
        tenant: str,
        *,
        status: str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        if status is not None and status not in set(SandboxState):
            raise ValidationFailed(
                f"unknown status {status!r}; one of {', '.join(s.value for s in SandboxState)}",
                field="status",
            )
        if not 1 <= limit <= 1000:
            raise ValidationFailed(f"limit must be between 1 and 1000, got {limit}", field="limit")
        statuses = [status] if status else [s.value for s in VISIBLE]
        return await self._store.list_sandboxes(
            tenant=tenant, statuses=statuses, metadata=metadata, limit=limit, cursor=cursor
        )

    async def set_timeout(self, tenant: str, sandbox_id: str, seconds: int) -> SandboxRecord:
        check_timeout(self._limits, seconds)
        record = await self.get(tenant, sandbox_id)
        require(record.status, frozenset({S.CREATING, S.RUNNING}), "set the timeout of", sandbox_id)
        now = self._clock()
        updated = await self._store.update_sandbox(
            sandbox_id,
            {"expires_at": now + timedelta(seconds=seconds), "updated_at": now},
            only_from=[S.CREATING, S.RUNNING],
        )
        if updated is None:
            return await self.get(tenant, sandbox_id)
        return updated

    # -- kill ------------------------------------------------------------------------

    async def kill(self, tenant: str, sandbox_id: str, reason: str = "deleted") -> None:
        """Idempotent: killing a killed sandbox of the same tenant succeeds."""
        await self._owned(tenant, sandbox_id)
        await self._kill(sandbox_id, reason)

    async def _kill(self, sandbox_id: str, reason: str) -> None:
        async with self._lock(sandbox_id):
            record = await self._store.get_sandbox(sandbox_id)
            if record is None or record.status == S.KILLED:
                return
            was_running = record.status == S.RUNNING
            await self._store.update_sandbox(
                sandbox_id,
                {"status": S.KILLING, "updated_at": self._clock()},
                only_from=sources_of(S.KILLING),
            )
            try:
                await self._runtime.destroy(sandbox_id)
            except SandbankError as exc:
                await self._store.update_sandbox(
                    sandbox_id, {"status": S.ERROR, "error": str(exc), "updated_at": self._clock()}
                )
                raise
            now = self._clock()
            await self._store.update_sandbox(
                sandbox_id,
                {"status": S.KILLED, "killed_at": now, "kill_reason": reason, "updated_at": now},
            )
        self._locks.pop(sandbox_id, None)
        self._telemetry.killed(reason, was_running)

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
            argv = ["/bin/bash", "-c", params.command]
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
        result = await self._runtime.channel(sandbox_id).exec(spec)
        self._telemetry.executed(result.duration_ms / 1000)
        return result

    async def files(self, tenant: str, sandbox_id: str) -> SandboxChannel:
        await self._running(tenant, sandbox_id, "access files of")
        return self._runtime.channel(sandbox_id)

    async def templates(self) -> list[TemplateInfo]:
        return await self._runtime.templates()

    async def usage(self, tenant: str, sandbox_id: str) -> SandboxUsage:
        await self._running(tenant, sandbox_id, "read metrics of")
        return await self._runtime.usage(sandbox_id)

    # -- deadlines and recovery ------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Kill every sandbox whose deadline passed; returns their ids."""
        due = await self._store.expired(self._clock(), [S.RUNNING, S.ERROR])
        killed: list[str] = []
        for record in due:
            try:
                await self._kill(record.id, "timeout")
                killed.append(record.id)
            except SandbankError as exc:
                log.error("sweep could not kill %s: %s", record.id, exc)
        return killed

    async def reconcile(self) -> dict[str, list[str]]:
        """Bring the store and the host into agreement after a (re)start."""
        report: dict[str, list[str]] = {"adopted": [], "killed": [], "lost": [], "orphans": []}
        now = self._clock()
        page_cursor: str | None = None
        records: list[SandboxRecord] = []
        while True:
            page = await self._store.list_sandboxes(
                tenant=None,
                statuses=[S.CREATING, S.RUNNING, S.KILLING, S.ERROR],
                limit=1000,
                cursor=page_cursor,
            )
            records.extend(page.items)
            if page.next_cursor is None:
                break
            page_cursor = page.next_cursor
        for record in records:
            expired = record.expires_at is not None and record.expires_at <= now
            if record.status == S.RUNNING and not expired:
                if await self._runtime.adopt(record.id):
                    report["adopted"].append(record.id)
                    continue
                report["lost"].append(record.id)
                await self._mark_lost(record.id)
                continue
            reason = "timeout" if expired else _RECOVERY_REASON.get(record.status, "deleted")
            if record.status == S.ERROR and not expired:
                await self._cleanup(record.id)
                continue
            try:
                await self._kill(record.id, reason)
                report["killed"].append(record.id)
            except SandbankError as exc:
                log.error("reconcile could not kill %s: %s", record.id, exc)
        self._telemetry.running.set(len(report["adopted"]))
        known = {r.id for r in records}
        for orphan in await self._runtime.running():
            if orphan not in known:
                report["orphans"].append(orphan)
                await self._cleanup(orphan)
        return report

    async def _mark_lost(self, sandbox_id: str) -> None:
        await self._cleanup(sandbox_id)
        await self._store.update_sandbox(
            sandbox_id,
            {
                "status": S.ERROR,
                "error": "the sandbox was no longer running when the server started",
                "updated_at": self._clock(),
            },
        )

    async def _cleanup(self, sandbox_id: str) -> None:
        try:
            await self._runtime.destroy(sandbox_id)
        except SandbankError as exc:
            log.error("could not clean up %s: %s", sandbox_id, exc)


_RECOVERY_REASON: dict[str, str] = {
    S.CREATING: "interrupted",
    S.KILLING: "deleted",
}
