"""What the terminal API returns and takes: shared by the asyncio and the
blocking SDK (``sandbox.pty``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .models import _Snapshot


def _when(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class PtySize:
    """A terminal's window size (E2B's ``PtySize(rows=, cols=)``)."""

    rows: int = 24
    cols: int = 80


@dataclass(frozen=True)
class PtyInfo(_Snapshot):
    """A terminal in a sandbox, running or ended."""

    pid: int
    cmd: list[str]
    cwd: str
    user: str
    running: bool
    cols: int
    rows: int
    tag: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    #: The signal that ended it (``exit_code`` is then 128+N).
    signal: int | None = None
    timed_out: bool = False
    #: Bytes of output so far: where a ``connect(pid, offset=...)`` would go live.
    output_bytes: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PtyInfo:
        return cls(
            pid=int(data["pid"]),
            cmd=list(data.get("cmd") or []),
            cwd=str(data.get("cwd", "")),
            user=str(data.get("user", "")),
            running=bool(data.get("running")),
            cols=int(data.get("cols") or 0),
            rows=int(data.get("rows") or 0),
            tag=data.get("tag"),
            started_at=_when(data.get("started_at")),
            ended_at=_when(data.get("ended_at")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            timed_out=bool(data.get("timed_out", False)),
            output_bytes=int(data.get("output_bytes") or 0),
        )


@dataclass(frozen=True)
class PtyResult:
    """How a terminal's process ended (``signal`` set when one killed it:
    ``exit_code`` is then 128+N)."""

    exit_code: int
    signal: int | None = None
    timed_out: bool = False
