"""Sandbox lifecycle: create, look up, list, kill, deadlines (what is done with
a live sandbox, exec, pause, its policy, is in ``sandbox_ops.py``).

Every state change goes through the store with a compare-and-set on the
status, and every runtime call that changes a sandbox runs under that
sandbox's lock, so a kill racing a create waits for it instead of leaking.
A create is served from the warm pool (``pool.py``) when it can be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sandbank.errors import (
    SandbankError,
    SandboxNotFound,
    ValidationFailed,
)
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import (
    Runtime,
    SandboxSpec,
    TemplateInfo,
)
from sandbank.server.service import template_boot
from sandbank.server.service.checkpoints import CheckpointService
from sandbank.server.service.idle import IdleTracker, check_policy
from sandbank.server.service.lifecycle import (
    ACTIVE,
    PUBLIC,
    VISIBLE,
    SandboxState,
    sources_of,
)
from sandbank.server.service.lifecycle_ops import LifecycleOps
from sandbank.server.service.params import CreateParams, Resolved, new_sandbox_id
from sandbank.server.service.policy import Limits, Quota, check_quota, resolve
from sandbank.server.service.pool import POOL_REASON, POOL_TENANT, PoolConfig, WarmPool
from sandbank.server.service.recovery import Recovery
from sandbank.server.service.sandbox_ops import SandboxOperations
from sandbank.server.service.snapshots import SnapshotService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import Page, QuotaRecord, SandboxRecord, Store, TenantUsage

log = logging.getLogger(__name__)

S = SandboxState


class SandboxService(SandboxOperations):
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        limits: Limits,
        quota: Quota,
        clock: Callable[[], datetime],
        telemetry: Telemetry,
        create_concurrency: int = 8,
        pool: PoolConfig | None = None,
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
        self.pool = WarmPool(
            store,
            runtime,
            limits,
            pool or PoolConfig(),
            clock,
            telemetry,
            lock=self._lock,
            kill=self._kill,
            create_slots=self._create_slots,
        )
        self._recovery = Recovery(store, runtime, clock, telemetry, kill=self._kill)
        self.idle = IdleTracker(store, clock)
        self.lifecycle = LifecycleOps(self)
        self.snapshots = SnapshotService(self)
        self.checkpoints = CheckpointService(
            store, runtime, clock, quota, lock=self._lock, get=self.get, kill=self._kill,
            tenant_lock=self._tenant_lock, create_slots=self._create_slots,
        )  # fmt: skip

    # -- helpers -------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _tenant_lock(self, tenant: str) -> asyncio.Lock:
        return self._tenant_locks.setdefault(tenant, asyncio.Lock())

    async def _owned(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """The tenant's sandbox, any state; another tenant's (or the pool's) is
        'not found'."""
        record = await self._store.get_sandbox(sandbox_id)
        if record is None or record.tenant != tenant or record.status == S.POOLED:
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
        self.idle.touch(sandbox_id)
        return record

    # -- create ----------------------------------------------------------------------

    async def create(self, tenant: str, params: CreateParams) -> SandboxRecord:
        check_policy(self._limits, params.idle_timeout, params.on_timeout)
        return await self.lifecycle.apply_policy(await self._create(tenant, params), params)

    async def _create(self, tenant: str, params: CreateParams) -> SandboxRecord:
        if params.snapshot is not None:
            want, snapshot_id = await self.snapshots.resolve_create(tenant, params)
            return await self._create_cold(tenant, want, snapshot_id=snapshot_id)
        want = resolve(self._limits, params)
        want, template = await template_boot.apply(self._runtime, want)
        if not template.ready:  # a built one needs no second look (~0.2 ms a create)
            await self._runtime.ensure_template(want.template)
        if template_boot.needs_boot(template) or not self.pool.serves(want.template, want.disk_gb):
            self._telemetry.missed(want.template, "not_pooled")
        else:
            handed = await self._hand_out(tenant, want)
            if handed is not None:
                return handed
        return await self._create_cold(tenant, want, template)

    async def _check_quota(self, tenant: str, want: Resolved) -> None:
        self._charge(tenant, want, *await self._store.quota_and_usage(tenant, ACTIVE))

    def _charge(
        self, tenant: str, want: Resolved, override: QuotaRecord | None, usage: TenantUsage
    ) -> None:
        check_quota(tenant, self._quota.merged(override), usage, want.vcpu, want.memory_mb)

    def _spec(self, sandbox_id: str, want: Resolved) -> SandboxSpec:
        return SandboxSpec(
            id=sandbox_id,
            template=want.template,
            vcpu=want.vcpu,
            memory_mb=want.memory_mb,
            disk_gb=want.disk_gb,
            hostname=want.hostname(sandbox_id),
            pids_limit=self._limits.pids_limit,
            env=dict(want.env),
            network=want.network,
        )

    async def _hand_out(self, tenant: str, want: Resolved) -> SandboxRecord | None:
        """A pooled sandbox, now the tenant's, with the requested limits; None when
        the pool is empty or its member failed (the caller then starts one cold)."""
        started = now = self._clock()

        owned_by_tenant: dict[str, Any] = {
            "tenant": tenant,
            "vcpu": want.vcpu,
            "memory_mb": want.memory_mb,
            "region": want.region,
            "env": dict(want.env),
            "metadata": dict(want.metadata),
            "network": want.network.to_dict(),
            "created_at": now,
            "updated_at": now,
            "expires_at": now + timedelta(seconds=want.timeout),
        }
        if want.name:  # members already have an unnamed sandbox's name
            owned_by_tenant["name"] = want.name
        # Quota and claim in one transaction under the tenant's lock: the claim is what counts.
        async with self._tenant_lock(tenant):
            charge = functools.partial(self._charge, tenant, want)
            member = await self.pool.claim(want.template, want.disk_gb, owned_by_tenant, charge)
        if member is None:
            self._telemetry.missed(want.template, "empty")
            return None
        failure: BaseException | None = None
        # Taken with no await since the claim: a kill of the new sandbox waits
        # until it has its limits.
        async with self._lock(member.id):
            try:
                spec = self._spec(member.id, want)
                if want.network == NetworkPolicy():
                    # Members start with the default policy: rewriting it would
                    # cost an nftables transaction on every hand-out.
                    spec = dataclasses.replace(spec, network=None)
                await self._runtime.customize(spec)
            except BaseException as exc:
                failure = exc
                # Back to the pool's books, so the tenant neither pays nor sees it.
                await self._store.update_sandbox(
                    member.id,
                    {
                        "tenant": POOL_TENANT,
                        "status": S.ERROR,
                        "error": f"hand-out failed: {str(exc) or type(exc).__name__}",
                        "updated_at": self._clock(),
                    },
                    only_from=[S.RUNNING],
                )
        if failure is None:
            self._telemetry.handed_out((self._clock() - started).total_seconds(), want.template)
            return member
        log.warning("pooled sandbox %s could not be handed out: %s", member.id, failure)
        self._telemetry.missed(want.template, "failed")
        try:
            await self._kill(member.id, POOL_REASON)
        except SandbankError as exc:
            log.error("could not remove failed pool member %s: %s", member.id, exc)
        if not isinstance(failure, Exception):
            raise failure
        return None

    async def _create_cold(
        self,
        tenant: str,
        want: Resolved,
        template: TemplateInfo | None = None,
        snapshot_id: str | None = None,
    ) -> SandboxRecord:
        now = self._clock()
        sandbox_id = new_sandbox_id()
        record = SandboxRecord(
            id=sandbox_id,
            tenant=tenant,
            name=want.display_name(sandbox_id),
            status=S.CREATING,
            template=want.template,
            vcpu=want.vcpu,
            memory_mb=want.memory_mb,
            disk_gb=want.disk_gb,
            region=want.region,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=want.timeout),
            env=dict(want.env),
            metadata=dict(want.metadata),
            network=want.network.to_dict(),
        )
        async with self._tenant_lock(tenant):
            await self._check_quota(tenant, want)
            await self._store.insert_sandbox(record)

        async with self._lock(sandbox_id):
            started = self._clock()
            try:
                async with self._create_slots:
                    if snapshot_id is None:
                        await self._runtime.create(self._spec(sandbox_id, want))
                    else:
                        await self.snapshots.start_copy(snapshot_id, self._spec(sandbox_id, want))
                if template is not None and template_boot.needs_boot(template):
                    await template_boot.boot(self._runtime.channel(sandbox_id), template, want.env)
            except BaseException as exc:
                await self._fail(sandbox_id, exc)
                raise
            running = await self._store.update_sandbox(
                sandbox_id,
                {"status": S.RUNNING, "updated_at": self._clock()},
                only_from=[S.CREATING],
            )
        assert running is not None
        self._telemetry.created((self._clock() - started).total_seconds(), want.template)
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
        if status is not None and status not in PUBLIC:
            known = ", ".join(s.value for s in SandboxState if s in PUBLIC)
            raise ValidationFailed(f"unknown status {status!r}; one of {known}", field="status")
        if not 1 <= limit <= 1000:
            raise ValidationFailed(f"limit must be between 1 and 1000, got {limit}", field="limit")
        statuses = [status] if status else [s.value for s in VISIBLE]
        return await self._store.list_sandboxes(
            tenant=tenant, statuses=statuses, metadata=metadata, limit=limit, cursor=cursor
        )

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
            was_running = record.status in (S.RUNNING, S.PAUSED)
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
        self.idle.forget(sandbox_id)
        self._telemetry.killed(reason, was_running)

    # -- deadlines and recovery ------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Kill every sandbox whose deadline passed, then apply idle timeouts;
        returns the ids of the sandboxes acted on."""
        return await self._recovery.sweep() + await self.idle.sweep(self.lifecycle.idle_actions())

    async def reconcile(self) -> dict[str, list[str]]:
        """Bring the store and the host into agreement after a (re)start."""
        report = await self._recovery.reconcile()
        report["snapshot_orphans"] = await self.snapshots.cleanup_orphans()
        return report
