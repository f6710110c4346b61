"""The periodic sweep that enforces stored deadlines.

Deadlines live in the store, so a restart loses none; the sweep is the only
enforcement path, which keeps it simple and testable. Each round also asks the
warm pool for a refill pass, which replaces members that died meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandbank.server.service.sandboxes import SandboxService

log = logging.getLogger(__name__)


class DeadlineSweeper:
    def __init__(self, service: SandboxService, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="deadline-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                killed = await self._service.sweep()
                if killed:
                    log.info("killed %d sandboxes past their deadline: %s", len(killed), killed)
            except Exception:
                # One bad sweep must not end enforcement for good.
                log.exception("deadline sweep failed")
            self._service.pool.wake()
            await asyncio.sleep(self._interval)
