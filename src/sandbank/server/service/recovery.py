"""Deadlines and recovery: the sweep that kills sandboxes past their deadline,
and the reconcile that brings store and host into agreement after a (re)start.

Both kill through the service's kill, so they serialize with API calls on the
same sandbox.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sandbank.errors import SandbankError
from sandbank.runtime.base import Runtime
from sandbank.server.service.lifecycle import SandboxState
from sandbank.server.service.pool import POOL_REASON
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.base import SandboxRecord, Store

log = logging.getLogger(__name__)

S = SandboxState


class Recovery:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        clock: Callable[[], datetime],
        telemetry: Telemetry,
        kill: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._clock = clock
        self._telemetry = telemetry
        self._kill = kill

    async def sweep(self) -> list[str]:
        """Kill every sandbox whose deadline passed; returns their ids. Pool
        members have no deadline."""
        due = await self._store.expired(
            self._clock(), [S.RUNNING, S.PAUSED, S.ERROR, S.STOPPED, S.HIBERNATED]
        )
        killed: list[str] = []
        for record in due:
            try:
                await self._kill(record.id, "timeout")
                killed.append(record.id)
            except SandbankError as exc:
                log.error("sweep could not kill %s: %s", record.id, exc)
        return killed

    async def reconcile(self) -> dict[str, list[str]]:
        """Adopt what still runs (tenants' sandboxes and pool members), finish
        interrupted creates and kills, kill what expired meanwhile, and remove
        anything on the host without a record."""
        report: dict[str, list[str]] = {
            "adopted": [],
            "pooled": [],
            "killed": [],
            "lost": [],
            "orphans": [],
        }
        now = self._clock()
        page_cursor: str | None = None
        records: list[SandboxRecord] = []
        while True:
            page = await self._store.list_sandboxes(
                tenant=None,
                statuses=[*_RECONCILED, *_STOPPED_AFTER, *HIBERNATION],
                limit=1000,
                cursor=page_cursor,
            )
            records.extend(page.items)
            if page.next_cursor is None:
                break
            page_cursor = page.next_cursor
        for record in records:
            if record.status == S.POOLED:
                await self._reconcile_member(record.id, report)
                continue
            expired = record.expires_at is not None and record.expires_at <= now
            if record.status in HIBERNATION and not expired:
                await self._reconcile_checkpointed(record, report)
                continue
            if record.status == S.RUNNING and not expired:
                # A fork's source cut off mid-checkpoint is frozen and parked.
                await self._reconcile_checkpointed(record, report)
                continue
            # A paused sandbox stays frozen: adopted as it is.
            if record.status in (S.RUNNING, S.PAUSED) and not expired:
                if await self._runtime.adopt(record.id):
                    report["adopted"].append(record.id)
                    if record.status == S.RUNNING:
                        # A server that died mid-snapshot may have left it frozen.
                        await self._thaw(record.id)
                    continue
                report["lost"].append(record.id)
                await self._mark_lost(record.id)
                continue
            if record.status in _STOPPED_AFTER and not expired:
                await self._settle_stopped(record, report)
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

    async def _reconcile_member(self, member_id: str, report: dict[str, list[str]]) -> None:
        """A pool member survives a restart if its agent answers; a dead one is
        killed (reason ``pool``) and the refill replaces it."""
        if await self._runtime.adopt(member_id):
            report["pooled"].append(member_id)
            return
        try:
            await self._kill(member_id, POOL_REASON)
            report["killed"].append(member_id)
        except SandbankError as exc:
            log.error("reconcile could not remove pool member %s: %s", member_id, exc)

    async def _settle_stopped(self, record: SandboxRecord, report: dict[str, list[str]]) -> None:
        """A stopped sandbox stays stopped; an interrupted stop or start is
        finished as a stop (nothing but the disk is left; start it again)."""
        if record.status != S.STOPPED:
            try:
                await self._runtime.stop_sandbox(record.id)
            except SandbankError as exc:
                log.error("reconcile could not stop %s: %s", record.id, exc)
                await self._store.update_sandbox(
                    record.id,
                    {"status": S.ERROR, "error": str(exc), "updated_at": self._clock()},
                )
                report["lost"].append(record.id)
                return
            await self._store.update_sandbox(
                record.id, {"status": S.STOPPED, "updated_at": self._clock()}
            )
        report.setdefault("stopped", []).append(record.id)

    async def _thaw(self, sandbox_id: str) -> None:
        try:
            await self._runtime.resume(sandbox_id)
        except SandbankError as exc:
            log.warning("could not thaw %s after the restart: %s", sandbox_id, exc)

    async def _reconcile_checkpointed(
        self, record: SandboxRecord, report: dict[str, list[str]]
    ) -> None:
        """Hibernated: nothing runs, its images wait on disk. An interrupted
        hibernate or wake ends as whichever the host shows: running, or saved."""
        found = await self._runtime.recover_checkpoint(record.id)
        if found == "running" and await self._runtime.adopt(record.id):
            # A server that died mid-snapshot may have left it frozen.
            await self._thaw(record.id)
            if record.status != S.RUNNING:
                await self._store.update_sandbox(
                    record.id, {"status": S.RUNNING, "updated_at": self._clock()}
                )
            report["adopted"].append(record.id)
            return
        if found == "hibernated":
            if record.status != S.HIBERNATED:
                await self._store.update_sandbox(
                    record.id, {"status": S.HIBERNATED, "updated_at": self._clock()}
                )
            report.setdefault("hibernated", []).append(record.id)
            return
        report["lost"].append(record.id)
        await self._mark_lost(record.id)

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


#: States that end as ``stopped`` after a restart.
_STOPPED_AFTER = frozenset({S.STOPPING, S.STOPPED, S.STARTING})
_RECONCILED = [S.POOLED, S.CREATING, S.RUNNING, S.PAUSED, S.KILLING, S.ERROR]
HIBERNATION = frozenset({S.HIBERNATING, S.HIBERNATED, S.WAKING})

_RECOVERY_REASON: dict[str, str] = {
    S.CREATING: "interrupted",
    S.KILLING: "deleted",
}
