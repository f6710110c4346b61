"""The agent's process records and output frames, read into ``JobInfo`` and
``OutputEvent``: shared by ``attach`` and ``run`` of ``AgentClient``."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sandbank.errors import SandbankError
from sandbank.protocol.agent import CHUNK, JSON, STDERR, STDOUT, FrameError, decode_json
from sandbank.runtime.base import JobInfo, JobSpec, OutputEvent, OutputKind

#: Output bytes one event may gather from frames already received: the agent's
#: own frame limit, so no consumer sees a larger event than before.
MERGE_LIMIT = CHUNK


class FrameSource(Protocol):
    async def frame(self) -> tuple[bytes, bytes]: ...

    def buffered(self, kind: bytes) -> bytes | None: ...


def start_request(spec: JobSpec, *, foreground: bool = False) -> dict[str, Any]:
    request: dict[str, Any] = {
        "op": "start",
        "cmd": list(spec.cmd),
        "env": dict(spec.env),
        "cwd": spec.cwd,
        "user": spec.user,
        "tag": spec.tag,
        "timeout": spec.timeout or None,
        "stdin": spec.stdin,
        "stdin_b64": None
        if spec.stdin_data is None
        else base64.b64encode(spec.stdin_data).decode(),
        "max_output": spec.max_output,
        "show_env": list(spec.show_env),
        "foreground": foreground,
    }
    if spec.pty is not None:
        request["pty"] = {"cols": spec.pty[0], "rows": spec.pty[1]}
    return request


async def output_events(link: FrameSource, offset: int) -> AsyncIterator[OutputEvent]:
    """Output frames until the ``exit`` event (or ``more``: no exit yet)."""
    at = offset
    while True:
        kind, payload = await link.frame()
        if kind in (STDOUT, STDERR):
            # A fast writer's output arrives as many small frames; those of the
            # same stream already here become one event (fewer, larger events
            # downstream, and no waiting for more).
            parts = [payload]
            size = len(payload)
            while size < MERGE_LIMIT and (ahead := link.buffered(kind)) is not None:
                parts.append(ahead)
                size += len(ahead)
            if len(parts) > 1:
                payload = b"".join(parts)
            stream: OutputKind = "stdout" if kind == STDOUT else "stderr"
            yield OutputEvent(kind=stream, data=payload, offset=at)
            at += len(payload)
            continue
        if kind != JSON:
            raise FrameError(f"unexpected {kind!r} frame in process output")
        try:
            event = decode_json(payload)
        except ValueError as exc:
            raise FrameError(f"malformed event frame: {exc}") from exc
        what = event.pop("event", None)
        if what == "truncated":
            at = int(event.get("offset", at))  # a terminal's ring moved on
            yield OutputEvent(kind="truncated", offset=at, stream=event.get("stream"))
        elif what == "exit":
            yield OutputEvent(kind="exit", offset=at, info=job_info(event))
            return
        elif what == "more":
            return
        else:
            raise FrameError(f"unexpected event {what!r} in process output")


def job_info(raw: dict[str, Any]) -> JobInfo:
    try:
        return JobInfo(
            pid=int(raw["pid"]),
            tag=raw.get("tag"),
            cmd=list(raw["cmd"]),
            cwd=str(raw["cwd"]),
            env_keys=list(raw.get("env_keys") or []),
            user=str(raw["user"]),
            started_at=float(raw["started_at"]),
            running=bool(raw["running"]),
            ended_at=None if raw.get("ended_at") is None else float(raw["ended_at"]),
            exit_code=raw.get("exit_code"),
            signal=raw.get("signal"),
            timed_out=bool(raw.get("timed_out")),
            stdin=str(raw.get("stdin") or "none"),
            output_bytes=int(raw.get("output_bytes") or 0),
            truncated=list(raw.get("truncated") or []),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            kind=str(raw.get("kind") or "background"),
            pty=(int(raw["pty"]["cols"]), int(raw["pty"]["rows"])) if raw.get("pty") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SandbankError(f"the agent sent a malformed process record: {raw!r}") from exc
