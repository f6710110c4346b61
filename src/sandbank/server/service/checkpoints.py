"""Hibernate, wake and fork: the service side of checkpoints (docs/checkpoints.md).

* hibernate: ``running -> hibernating -> hibernated``. The runtime saves the
  sandbox's processes and memory to disk and removes its container: no
  process, no memory, no address; the disk stays. A failed save leaves it
  running (back to ``running``, with the error). The deadline keeps running.
* wake: ``hibernated -> waking -> running``; a failed restore leaves it
  hibernated (the images are kept), so waking can be tried again.
* fork: N new sandboxes, each a copy of a running one (processes, memory,
  files at that moment), with ids, disks and addresses of their own; the
  source keeps running. Each copy counts against the quota like a create.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from sandbank.errors import (
    CheckpointUnsupported,
    SandbankError,
    ValidationFailed,
)
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import Runtime
from sandbank.server.service.lifecycle import ACTIVE, SandboxState, require
from sandbank.server.service.params import new_sandbox_id
from sandbank.server.service.policy import Quota, check_quota
from sandbank.server.store.base import SandboxRecord, Store

log = logging.getLogger(__name__)

S = SandboxState

#: Copies one fork may make.
MAX_FORK = 16


class _Phases:
    """Seconds per phase of one fork, logged at INFO for bench/checkpoint.py."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._clock = self._started = time.monotonic()

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        self.marks[phase] = now - self._clock
        self._clock = now

    def log(self, what: str) -> None:
        ms = {k: round(v * 1000, 1) for k, v in self.marks.items()}
        ms["total"] = round((time.monotonic() - self._started) * 1000, 1)
        log.info("phases %s %s", what, json.dumps(ms))


class CheckpointService:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        clock: Callable[[], datetime],
        quota: Quota,
        *,
        lock: Callable[[str], asyncio.Lock],
        get: Callable[[str, str], Awaitable[SandboxRecord]],
        tenant_lock: Callable[[str], asyncio.Lock],
        create_slots: asyncio.Semaphore,
        kill: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._clock = clock
        self._lock = lock
        self._get = get
        self._quota = quota
        self._tenant_lock = tenant_lock
        self._create_slots = create_slots
        self._kill = kill

    def _supported(self) -> None:
        problem = self._runtime.checkpoint_problem()
        if problem is not None:
            raise CheckpointUnsupported(f"hibernate and fork are not available: {problem}")

    async def _move(
        self, sandbox_id: str, status: S, frm: list[S], **fields: object
    ) -> SandboxRecord | None:
        return await self._store.update_sandbox(
            sandbox_id, {"status": status, "updated_at": self._clock(), **fields}, only_from=frm
        )

    async def hibernate(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Idempotent: hibernating a hibernated sandbox changes nothing."""
        self._supported()
        async with self._lock(sandbox_id):
            record = await self._get(tenant, sandbox_id)
            if record.status == S.HIBERNATED:
                return record
            require(record.status, frozenset({S.RUNNING}), "hibernate", sandbox_id)
            await self._move(sandbox_id, S.HIBERNATING, [S.RUNNING])
            try:
                await self._runtime.checkpoint(sandbox_id)
            except BaseException as exc:
                # The runtime leaves the sandbox running when a save fails.
                alive = await self._runtime.is_alive(sandbox_id)
                await self._move(
                    sandbox_id,
                    S.RUNNING if alive else S.ERROR,
                    [S.HIBERNATING],
                    error=f"hibernate failed: {exc}",
                )
                raise
            updated = await self._move(sandbox_id, S.HIBERNATED, [S.HIBERNATING])
        return updated or await self._get(tenant, sandbox_id)

    async def wake(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        """Idempotent: waking a running sandbox changes nothing."""
        async with self._lock(sandbox_id):
            record = await self._get(tenant, sandbox_id)
            if record.status == S.RUNNING:
                return record
            require(record.status, frozenset({S.HIBERNATED}), "wake", sandbox_id)
            self._supported()
            image = self._runtime.hibernated_image(sandbox_id)
            if image is None:
                await self._move(
                    sandbox_id, S.ERROR, [S.HIBERNATED], error="its hibernation images are gone"
                )
                raise SandbankError(f"sandbox {sandbox_id} has no hibernation images left")
            await self._move(sandbox_id, S.WAKING, [S.HIBERNATED])
            try:
                policy = NetworkPolicy.from_dict(record.network)
                await self._runtime.restore_checkpoint(sandbox_id, image, network=policy)
            except BaseException as exc:
                await self._move(sandbox_id, S.HIBERNATED, [S.WAKING], error=f"wake failed: {exc}")
                raise
            updated = await self._move(sandbox_id, S.RUNNING, [S.WAKING], error=None)
        return updated or await self._get(tenant, sandbox_id)

    async def fork(self, tenant: str, sandbox_id: str, count: int) -> list[SandboxRecord]:
        if not 1 <= count <= MAX_FORK:
            raise ValidationFailed(
                f"count must be between 1 and {MAX_FORK}, got {count}", field="count"
            )
        self._supported()
        took = _Phases()
        source = await self._get(tenant, sandbox_id)
        require(source.status, frozenset({S.RUNNING}), "fork", sandbox_id)
        copies: list[SandboxRecord] = []
        took("get")
        async with self._tenant_lock(tenant):
            for _ in range(count):
                override, usage = await self._store.quota_and_usage(tenant, ACTIVE)
                quota = self._quota.merged(override)
                check_quota(tenant, quota, usage, source.vcpu, source.memory_mb)
                copies.append(await self._insert_copy(source))
        took("quota, insert")
        try:
            async with self._lock(sandbox_id):
                # Still running now that no other operation on it is under way.
                current = await self._get(tenant, sandbox_id)
                require(current.status, frozenset({S.RUNNING}), "fork", sandbox_id)
                took("lock, get")
                image = await self._runtime.checkpoint(
                    sandbox_id, leave_running=True, copies=[c.id for c in copies]
                )
                took("checkpoint")
        except BaseException as exc:
            for copy in copies:
                await self._move(copy.id, S.ERROR, [S.CREATING], error=f"fork failed: {exc}")
            raise
        try:
            policy = NetworkPolicy.from_dict(source.network)
            results = await asyncio.gather(
                *(self._restore_copy(c.id, image, policy) for c in copies), return_exceptions=True
            )
            took("restores")
        finally:
            await self._runtime.discard_checkpoint(image)
        took("discard")
        took.log(f"fork-service {sandbox_id} into {count}")
        done = [r for r in results if isinstance(r, SandboxRecord)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # All or none: the copies that did start are removed again.
            for record in done:
                with contextlib.suppress(SandbankError):
                    await self._kill(record.id, "fork_failed")
            raise failed[0]
        return done

    async def _insert_copy(self, source: SandboxRecord) -> SandboxRecord:
        now = self._clock()
        copy_id = new_sandbox_id()
        record = SandboxRecord(
            id=copy_id,
            tenant=source.tenant,
            name=f"{source.name}-fork-{copy_id[:6]}",
            status=S.CREATING,
            template=source.template,
            vcpu=source.vcpu,
            memory_mb=source.memory_mb,
            disk_gb=source.disk_gb,
            region=source.region,
            created_at=now,
            updated_at=now,
            expires_at=source.expires_at,
            env=dict(source.env),
            metadata=dict(source.metadata),
            network=dict(source.network),
        )
        await self._store.insert_sandbox(record)
        return record

    async def _restore_copy(self, copy_id: str, image: str, policy: NetworkPolicy) -> SandboxRecord:
        async with self._lock(copy_id):
            try:
                async with self._create_slots:
                    await self._runtime.restore_checkpoint(copy_id, image, network=policy)
            except BaseException as exc:
                log.warning("fork copy %s failed: %s", copy_id, exc)
                try:
                    await self._runtime.destroy(copy_id)
                except SandbankError as cleanup:
                    log.error("cleanup after failed fork copy %s: %s", copy_id, cleanup)
                await self._move(copy_id, S.ERROR, [S.CREATING], error=f"fork failed: {exc}")
                raise
            record = await self._move(copy_id, S.RUNNING, [S.CREATING])
        assert record is not None
        return record
