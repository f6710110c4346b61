"""Per-phase timings of one runtime operation (create, checkpoint, restore).

``Phases`` is called with a phase's name when that phase ends and keeps the
seconds since the previous mark; ``log`` writes them as one line that benches
read from the server's log (``phases <what> <id> {json}``, at INFO).
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)


class Phases:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._started = self._clock = time.monotonic()

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        self.marks[phase] = self.marks.get(phase, 0.0) + now - self._clock
        self._clock = now

    def total(self) -> float:
        return time.monotonic() - self._started

    def log(self, what: str, sandbox_id: str) -> None:
        if log.isEnabledFor(logging.INFO):
            ms = {k: round(v * 1000, 1) for k, v in self.marks.items()}
            ms["total"] = round(self.total() * 1000, 1)
            log.info("phases %s %s %s", what, sandbox_id, json.dumps(ms))


def ignore(_phase: str) -> None:
    """For callers that do not time the phases."""
