"""The warm pool: sandboxes started ahead of demand, so that a create hands
one out at once instead of waiting for the runtime to start one.

Members are ordinary sandboxes started with the default limits and disk size.
They are stored as ``pooled`` records of a tenant no API key can belong to,
with no deadline, so they count against no quota, are never listed and answer
404 to everyone. A create claims one with a compare-and-set on its status (two
creates never get the same member) and the runtime then gives it the requested
limits and hostname. A single background task tops the pool up one sandbox at
a time: on a small host, parallel refills would slow the requests they serve.
Members outlive the server like any sandbox; the next start adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbank.errors import SandbankError
from sandbank.runtime.base import ExecSpec, Runtime, SandboxSpec
from sandbank.server.service.lifecycle import ACTIVE, SandboxState
from sandbank.server.service.params import new_sandbox_id
from sandbank.server.service.policy import Limits
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import QuotaRecord, SandboxRecord, Store, TenantUsage

log = logging.getLogger(__name__)

S = SandboxState

#: Owner of pool members. API tenants match ``[A-Za-z0-9_.-]+``, so no key can
#: ever name this one.
POOL_TENANT = "(pool)"
#: Kill reason of members the pool gives up (dead, surplus, failed).
POOL_REASON = "pool"


@dataclass(frozen=True)
class PoolConfig:
    #: Members kept ready per template; 0 turns the pool off.
    size: int = 0
    templates: tuple[str, ...] = ()
    #: Seconds before retrying a failed refill, doubling up to the maximum: a
    #: broken template must not keep the host busy with doomed starts.
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    #: Seconds after a hand-out before a refill may start a sandbox, while at
    #: least half the members are left (see ``_settle``).
    refill_delay: float = 0.0


class WarmPool:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        limits: Limits,
        config: PoolConfig,
        clock: Callable[[], datetime],
        telemetry: Telemetry,
        *,
        lock: Callable[[str], asyncio.Lock],
        kill: Callable[[str, str], Awaitable[None]],
        create_slots: asyncio.Semaphore,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._limits = limits
        self._config = config
        self._clock = clock
        self._telemetry = telemetry
        # The service's per-sandbox locks and kill, so that pool and API
        # operations on one sandbox serialize the same way.
        self._lock = lock
        self._kill = kill
        self._create_slots = create_slots
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = self._config.backoff_min
        self._last_hand_out = -float("inf")
        # Set at each hand-out, so that a refill holding back looks again.
        self._handed_out = asyncio.Event()

    @property
    def config(self) -> PoolConfig:
        return self._config

    def serves(self, template: str, disk_gb: int) -> bool:
        """Whether a create of this template and disk size can come from the pool
        (other limits are changed at hand-out; a disk cannot be)."""
        return (
            self._config.size > 0
            and template in self._config.templates
            and disk_gb == self._limits.disk_gb_default
        )

    # -- hand-out ---------------------------------------------------------------------

    async def ready(self, template: str, disk_gb: int) -> list[SandboxRecord]:
        """Members a create of this template and disk size could claim, oldest first."""
        page = await self._store.list_sandboxes(
            tenant=POOL_TENANT,
            statuses=[S.POOLED],
            template=template,
            disk_gb=disk_gb,
            limit=max(1, self._config.size),
        )
        return page.items

    async def claim(
        self,
        template: str,
        disk_gb: int,
        changes: Mapping[str, Any],
        charge: Callable[[QuotaRecord | None, TenantUsage], None],
    ) -> SandboxRecord | None:
        """Make the oldest member of this template and disk size ``running`` with
        ``changes`` applied, atomically; None if there is none. ``charge`` sees
        the new tenant's quota and usage in the same transaction and may refuse
        (raise), which leaves the member pooled. Members are named
        ``sandbox-<id[:6]>`` like any unnamed sandbox, so ``changes`` need not
        know which one it gets. Wakes the refill either way, once the claim is in
        the store (a pass must not count the claimed one)."""
        claimed = await self._store.claim_sandbox(
            tenant=POOL_TENANT,
            status=S.POOLED,
            template=template,
            disk_gb=disk_gb,
            changes={**changes, "status": S.RUNNING},
            charge=charge,
            charge_statuses=ACTIVE,
        )
        if claimed is not None:
            self._telemetry.pool_size.labels(template=template).dec()
            self._last_hand_out = time.monotonic()
            self._handed_out.set()
        self.wake()
        return claimed

    async def retire(self, member_id: str) -> bool:
        """Kill a member unless a create claimed it first; False if one did."""
        async with self._lock(member_id):
            moved = await self._store.update_sandbox(
                member_id, {"status": S.KILLING, "updated_at": self._clock()}, only_from=[S.POOLED]
            )
        if moved is None:
            return False
        await self._kill(member_id, POOL_REASON)
        return True

    # -- refill -----------------------------------------------------------------------

    def wake(self) -> None:
        """Ask the background task for a refill pass (cheap; passes coalesce)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pool-refill")
            self.wake()

    async def stop(self) -> None:
        """Stop refilling; ready members keep running for the next start to adopt."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                started = await self.refill()
            except Exception as exc:
                self._telemetry.pool_refill_failed()
                log.error(
                    "pool refill failed, retrying in %.3g s: %s",
                    self._backoff,
                    exc,
                    exc_info=not isinstance(exc, SandbankError),
                )
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, self._config.backoff_max)
                self.wake()
                continue
            self._backoff = self._config.backoff_min
            if started:
                log.debug("pool: started %d sandboxes", started)

    async def refill(self) -> int:
        """One pass: retire dead, surplus and no longer wanted members, then start
        members until every pooled template has ``size`` ready. Returns how many
        started; raises the first failure after trying every template."""
        size, default_disk = self._config.size, self._limits.disk_gb_default
        ready = {template: 0 for template in self._config.templates} if size > 0 else {}
        for member in await self.members():
            wanted = ready.get(member.template, size) < size and member.disk_gb == default_disk
            if wanted and await self._runtime.is_alive(member.id):
                ready[member.template] += 1
            else:
                await self.retire(member.id)
        await self.publish()
        started, failures = 0, []
        # Round-robin, one at a time: each template gets a member before any gets two.
        short = [t for t, n in ready.items() if n < size]
        while short:
            for template in list(short):
                await self._settle(template)
                try:
                    await self._start_member(template)
                except Exception as exc:
                    failures.append(exc)
                    short.remove(template)
                    continue
                started += 1
                ready[template] += 1
                if ready[template] >= size:
                    short.remove(template)
        if failures:
            raise failures[0]
        return started

    async def _settle(self, template: str) -> None:
        """Hold a start back while a create got a member less than
        ``refill_delay`` ago: its first commands run now, and on a small host a
        start slows them down. Not when fewer than half the members are left
        (refilling comes first then), and never for more than 5x the delay."""
        delay, size = self._config.refill_delay, self._config.size
        give_up = time.monotonic() + delay * 5
        while (wait := min(self._last_hand_out + delay, give_up) - time.monotonic()) > 0:
            self._handed_out.clear()
            if len(await self.ready(template, self._limits.disk_gb_default)) * 2 < size:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handed_out.wait(), wait)

    async def members(self) -> list[SandboxRecord]:
        """Every ready member, of any template, oldest first."""
        found: list[SandboxRecord] = []
        cursor: str | None = None
        while True:
            page = await self._store.list_sandboxes(
                tenant=POOL_TENANT, statuses=[S.POOLED], limit=1000, cursor=cursor
            )
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def publish(self) -> None:
        """Set the size gauge from the store, the source of truth."""
        counts = {template: 0 for template in self._config.templates}
        for member in await self.members():
            counts[member.template] = counts.get(member.template, 0) + 1
        for template, count in counts.items():
            self._telemetry.pool_size.labels(template=template).set(count)

    async def _start_member(self, template: str) -> None:
        await self._runtime.ensure_template(template)
        lim, now = self._limits, self._clock()
        member_id = new_sandbox_id()
        hostname = f"sandbox-{member_id[:6]}"
        # Recorded before the runtime starts it, so a crash mid-way is cleaned up
        # by the next start's reconcile like any interrupted create.
        await self._store.insert_sandbox(
            SandboxRecord(
                id=member_id,
                tenant=POOL_TENANT,
                name=hostname,
                status=S.CREATING,
                template=template,
                vcpu=lim.vcpu_default,
                memory_mb=lim.memory_mb_default,
                disk_gb=lim.disk_gb_default,
                region=lim.default_region,
                created_at=now,
                updated_at=now,
                expires_at=None,
            )
        )
        spec = SandboxSpec(
            id=member_id,
            template=template,
            vcpu=lim.vcpu_default,
            memory_mb=lim.memory_mb_default,
            disk_gb=lim.disk_gb_default,
            hostname=hostname,
            pids_limit=lim.pids_limit,
        )
        failure: BaseException | None = None
        async with self._lock(member_id):
            try:
                async with self._create_slots:
                    await self._runtime.create(spec)
                    # One command now warms what a first command pays for (the
                    # agent's lazy imports, the shell and libc pages), so the
                    # caller's first command after a hand-out runs at full speed.
                    await self._runtime.channel(member_id).exec(
                        ExecSpec(cmd=["/bin/bash", "-c", "true"], user="user", timeout=10)
                    )
            except BaseException as exc:
                failure = exc
            else:
                await self._store.update_sandbox(
                    member_id,
                    {"status": S.POOLED, "updated_at": self._clock()},
                    only_from=[S.CREATING],
                )
        if failure is not None:
            # Nobody will ask about a member that never started: finish it as
            # killed rather than leave an error record behind.
            await self._kill(member_id, POOL_REASON)
            raise failure
        self._telemetry.pool_member_started((self._clock() - now).total_seconds())
        self._telemetry.pool_size.labels(template=template).inc()
