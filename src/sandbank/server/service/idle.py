"""Idle timeouts: what counts as activity, where it is kept, what happens after.

Every operation on a sandbox goes through ``SandboxService.get`` (API calls,
exec, files, processes) or ``PreviewGate.open`` (preview requests); both call
``IdleTracker.touch``, which only writes a time into a dict. Work inside a
sandbox runs through an ``activity.ActiveChannel``, which keeps the sandbox
busy (never idle) while a call or stream is under way. The deadline
sweep flushes those times to the store (``last_activity_at``) in one
transaction at most every 5 seconds, so a restart loses at most that much
activity (the sweep decides on the times in memory), and then applies
``on_timeout`` to every sandbox idle for ``idle_timeout`` seconds.

The idle clock starts at creation; a sandbox never touched since then is idle
from ``created_at``. Stopped sandboxes are not swept: they cost nothing. What
each ``on_timeout`` does is the table ``ON_TIMEOUT`` below; a new action is
one more entry (and the service method it calls).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta

from sandbank.errors import SandbankError, ValidationFailed
from sandbank.server.service.lifecycle import SandboxState
from sandbank.server.service.policy import Limits
from sandbank.server.store.base import SandboxRecord, Store

log = logging.getLogger(__name__)

S = SandboxState

#: on_timeout -> the states it applies to; the action itself is in LifecycleOps.idle_actions.
ON_TIMEOUT: dict[str, frozenset[SandboxState]] = {
    "kill": frozenset({S.RUNNING, S.PAUSED}),
    "pause": frozenset({S.RUNNING}),
    "hibernate": frozenset({S.RUNNING}),
}


def check_policy(limits: Limits, idle_timeout: int | None, on_timeout: str | None) -> None:
    if idle_timeout is not None and not 0 <= idle_timeout <= limits.max_timeout:
        raise ValidationFailed(
            f"idle_timeout must be between 1 and {limits.max_timeout} seconds (0: none), "
            f"got {idle_timeout}",
            field="idle_timeout",
        )
    if on_timeout is not None and on_timeout not in ON_TIMEOUT:
        raise ValidationFailed(
            f"on_timeout must be one of {', '.join(sorted(ON_TIMEOUT))}, got {on_timeout!r}",
            field="on_timeout",
        )


class IdleTracker:
    def __init__(
        self, store: Store, clock: Callable[[], datetime], flush_every: float = 5.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._flush_every = timedelta(seconds=flush_every)
        self._flushed_at: datetime | None = None
        #: sandbox id -> last activity not yet written to the store.
        self._pending: dict[str, datetime] = {}
        self._seen: dict[str, datetime] = {}
        #: sandbox id -> calls inside it under way (see activity.py).
        self._busy: dict[str, int] = {}

    @contextlib.contextmanager
    def busy(self, sandbox_id: str) -> Iterator[None]:
        """Activity for as long as the block runs (a long exec, a followed stream)."""
        self.touch(sandbox_id)
        self._busy[sandbox_id] = self._busy.get(sandbox_id, 0) + 1
        try:
            yield
        finally:
            left = self._busy.pop(sandbox_id) - 1
            if left:
                self._busy[sandbox_id] = left
            self.touch(sandbox_id)

    def touch(self, sandbox_id: str) -> None:
        now = self._clock()
        self._pending[sandbox_id] = now
        self._seen[sandbox_id] = now

    def last_activity(self, record: SandboxRecord) -> datetime:
        times = [record.created_at, self._seen.get(record.id), record.last_activity_at]
        return max(t for t in times if t is not None)

    def idle_since(self, record: SandboxRecord, now: datetime) -> bool:
        if not record.idle_timeout or record.id in self._busy:
            return False
        return self.last_activity(record) + timedelta(seconds=record.idle_timeout) <= now

    async def flush(self, force: bool = False) -> None:
        """Write the activity seen since the last flush, in one transaction, at most
        every ``flush_every`` seconds (decisions use the times in memory)."""
        now = self._clock()
        due = self._flushed_at is None or now - self._flushed_at >= self._flush_every
        if not self._pending or not (due or force):
            return
        pending, self._pending = self._pending, {}
        self._flushed_at = now
        await self._store.set_last_activity(pending)

    def forget(self, sandbox_id: str) -> None:
        self._pending.pop(sandbox_id, None)
        self._seen.pop(sandbox_id, None)

    async def sweep(
        self, actions: dict[str, Callable[[SandboxRecord], Awaitable[object]]]
    ) -> list[str]:
        """Flush activity, then apply ``on_timeout`` to each idle sandbox; their ids."""
        await self.flush()
        now = self._clock()
        states = sorted(set().union(*ON_TIMEOUT.values()))
        done: list[str] = []
        for record in await self._store.idle_candidates(states):
            action = actions.get(record.on_timeout)
            if action is None or record.status not in ON_TIMEOUT[record.on_timeout]:
                continue
            if not self.idle_since(record, now):
                continue
            try:
                await action(record)
                done.append(record.id)
            except SandbankError as exc:
                log.error("idle %s of %s failed: %s", record.on_timeout, record.id, exc)
        return done
