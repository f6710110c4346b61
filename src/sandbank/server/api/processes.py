"""/v1/sandboxes/{id}/exec/stream and /v1/sandboxes/{id}/processes.

Output streams are NDJSON, one event a line, sent as they happen:
``start`` (pid), ``stdout``/``stderr`` (``data`` as UTF-8 text, plus ``data_b64``
with the exact bytes whenever the text does not re-encode to them), ``truncated``
(a stream hit its cap), and a final ``exit``. With ``Accept: text/event-stream``
the same events come as server-sent events (``event: <type>``, ``data: <json>``).
The WebSocket form is in ``exec_ws``. See docs/processes.md.
"""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sandbank.errors import PayloadTooLarge
from sandbank.protocol.api import ExecRequest
from sandbank.protocol.api_processes import (
    ProcessList,
    ProcessOut,
    SignalOut,
    SignalRequest,
    StartProcessRequest,
)
from sandbank.runtime.base import JobInfo, OutputEvent
from sandbank.server.api.convert import exec_params
from sandbank.server.api.deps import Caller, SandboxId, Services, Svc
from sandbank.server.api.output_lines import output_json
from sandbank.server.service.processes import ProcessService, Started, StartParams, closing

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["processes"])

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
#: Bytes one ``stdin`` request may carry (the agent's frames hold 16 MiB of base64).
MAX_STDIN = 8 * 1024 * 1024
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON events: start, stdout, stderr, truncated, exit "
        "(server-sent events with Accept: text/event-stream)",
        "content": {NDJSON: {"schema": {"type": "string"}}, SSE: {"schema": {"type": "string"}}},
    }
}
#: No proxy buffering: every event goes out as it happens.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _processes(svc: Services) -> ProcessService:
    return ProcessService(svc.sandboxes)


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def process_out(info: JobInfo) -> ProcessOut:
    return ProcessOut(
        pid=info.pid,
        tag=info.tag,
        cmd=info.cmd,
        cwd=info.cwd,
        env_keys=info.env_keys,
        user=info.user,
        running=info.running,
        started_at=datetime.fromtimestamp(info.started_at, UTC),
        ended_at=_time(info.ended_at),
        exit_code=info.exit_code,
        signal=info.signal,
        timed_out=info.timed_out,
        stdin=info.stdin,
        output_bytes=info.output_bytes,
        truncated=info.truncated,
        env=info.env,
        kind=info.kind,
    )


def _line(event: dict[str, Any] | bytes) -> bytes:
    if isinstance(event, bytes):
        return event + b"\n"
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _exit(info: JobInfo | None) -> dict[str, Any]:
    if info is None:
        return {"type": "exit", "exit_code": -1, "timed_out": False, "duration_ms": 0.0}
    ended = info.ended_at if info.ended_at is not None else info.started_at
    return {
        "type": "exit",
        "pid": info.pid,
        "exit_code": info.exit_code,
        "signal": info.signal,
        "timed_out": info.timed_out,
        "duration_ms": round(max(0.0, ended - info.started_at) * 1000, 3),
        "truncated": info.truncated,
    }


async def wire_events(events: AsyncIterator[OutputEvent]) -> AsyncIterator[dict[str, Any] | bytes]:
    """The wire events of an output stream; text decoded per stream so a
    character split across chunks is not mangled. An output event whose bytes
    can be written as JSON text directly comes as that text (output_lines)."""
    decoders = {
        "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
        "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    async with closing(events):
        async for event in events:
            if event.kind in decoders:
                decoder = decoders[event.kind]
                if event.data.isascii() and not decoder.getstate()[0]:
                    # The common case, and the hot path of large outputs: one pass.
                    line = output_json(event.kind, event.data, event.offset)
                    if line is not None:
                        yield line
                        continue
                    text = event.data.decode("ascii")
                    exact = True
                else:
                    text = decoder.decode(event.data)
                    exact = text.encode() == event.data
                out: dict[str, Any] = {"type": event.kind, "data": text, "offset": event.offset}
                if not exact:
                    out["data_b64"] = base64.b64encode(event.data).decode()
                yield out
            elif event.kind == "truncated":
                yield {"type": "truncated", "stream": event.stream, "offset": event.offset}
            elif event.kind == "exit":
                yield {**_exit(event.info), "offset": event.offset}


def _sse(event: dict[str, Any] | bytes) -> bytes:
    if isinstance(event, bytes):  # an output event: its type is its first field
        kind = event[9 : event.index(b'"', 9)]
        return b"event: %s\ndata: %s\n\n" % (kind, event)
    return b"event: %s\ndata: %s\n\n" % (
        str(event["type"]).encode(),
        json.dumps(event, separators=(",", ":")).encode(),
    )


async def _encoded(
    events: AsyncIterator[OutputEvent], first: dict[str, Any] | None, sse: bool
) -> AsyncIterator[bytes]:
    encode = _sse if sse else _line
    if first is not None:
        yield encode(first)
    async for event in wire_events(events):
        yield encode(event)


def _wants_sse(request: Request) -> bool:
    return SSE in request.headers.get("accept", "")


def _stream(
    request: Request,
    events: AsyncIterator[OutputEvent],
    first: dict[str, Any] | None = None,
    started: Started | None = None,
) -> StreamingResponse:
    sse = _wants_sse(request)
    body = _encoded(events, first, sse)
    media = SSE if sse else NDJSON
    if started is None:
        return StreamingResponse(body, media_type=media, headers=_STREAM_HEADERS)
    return ForegroundResponse(started, body, media_type=media, headers=_STREAM_HEADERS)


def unwrap(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure of a task group of two where one failed and the other was
    cancelled: that one failure is the news."""
    return failed.exceptions[0] if len(failed.exceptions) == 1 else failed


class ForegroundResponse(StreamingResponse):
    """The stream of a foreground command, which ends with it: however the
    response ends before the exit (the client left before the first byte or
    mid-stream, or the send failed), the command's stream is closed, which
    kills it. The client is watched for the whole response, also while the
    command is silent."""

    def __init__(self, started: Started, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        except BaseExceptionGroup as failed:
            cause = unwrap(failed)
            if not isinstance(cause, OSError):  # OSError: the client left during a send
                raise cause from None
        finally:
            with anyio.CancelScope(shield=True):
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
                await self.started.close()


@router.post("/exec/stream", response_class=StreamingResponse, responses=_STREAM_DOC)
async def exec_stream(
    request: Request, sandbox_id: SandboxId, body: ExecRequest, svc: Svc, caller: Caller
) -> StreamingResponse:
    """Run a command and stream its output as it happens. The command is
    foreground: a client that leaves before its exit takes it along."""
    started = await _processes(svc).run_streamed(caller.tenant, sandbox_id, exec_params(body))
    return _stream(
        request, started.events, {"type": "start", "pid": started.info.pid}, started=started
    )


@router.post("/processes", status_code=201, response_model=ProcessOut)
async def start_process(
    sandbox_id: SandboxId, body: StartProcessRequest, svc: Svc, caller: Caller
) -> ProcessOut:
    info = await _processes(svc).start(
        caller.tenant,
        sandbox_id,
        StartParams(
            cmd=body.cmd,
            command=body.command,
            env=body.env or {},
            cwd=body.cwd,
            user=body.user,
            tag=body.tag,
            timeout=body.timeout,
            stdin=body.stdin,
            stdin_data=None if body.stdin_data is None else body.stdin_data.encode(),
            max_output=body.max_output,
        ),
    )
    return process_out(info)


@router.get("/processes", response_model=ProcessList)
async def list_processes(
    sandbox_id: SandboxId, svc: Svc, caller: Caller, running: bool | None = None
) -> ProcessList:
    jobs = await _processes(svc).list(caller.tenant, sandbox_id, running)
    return ProcessList(processes=[process_out(job) for job in jobs])


@router.get("/processes/{pid}", response_model=ProcessOut)
async def get_process(sandbox_id: SandboxId, pid: int, svc: Svc, caller: Caller) -> ProcessOut:
    return process_out(await _processes(svc).get(caller.tenant, sandbox_id, pid))


@router.get("/processes/{pid}/output", response_class=StreamingResponse, responses=_STREAM_DOC)
async def process_output(
    request: Request,
    sandbox_id: SandboxId,
    pid: int,
    svc: Svc,
    caller: Caller,
    offset: int = Query(0),
    follow: bool = False,
) -> StreamingResponse:
    events = await _processes(svc).output(caller.tenant, sandbox_id, pid, offset, follow)
    return _stream(request, events)


@router.post("/processes/{pid}/wait", response_model=ProcessOut)
async def wait_process(
    sandbox_id: SandboxId,
    pid: int,
    svc: Svc,
    caller: Caller,
    timeout: float | None = Query(None, description="Seconds; none or 0 waits for ever."),
) -> ProcessOut:
    return process_out(await _processes(svc).wait(caller.tenant, sandbox_id, pid, timeout))


@router.post("/processes/{pid}/stdin", status_code=204)
async def send_stdin(
    request: Request,
    sandbox_id: SandboxId,
    pid: int,
    svc: Svc,
    caller: Caller,
    close: bool = False,
) -> Response:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_STDIN:
            raise PayloadTooLarge(
                f"stdin writes are at most {MAX_STDIN} bytes per request; send it in parts"
            )
    await _processes(svc).send_stdin(caller.tenant, sandbox_id, pid, bytes(data), close)
    return Response(status_code=204)


@router.post("/processes/{pid}/signal", response_model=SignalOut)
async def signal_process(
    sandbox_id: SandboxId, pid: int, body: SignalRequest, svc: Svc, caller: Caller
) -> SignalOut:
    number = await _processes(svc).signal(caller.tenant, sandbox_id, pid, body.signal)
    return SignalOut(pid=pid, signal=number)


@router.delete("/processes/{pid}", status_code=204)
async def kill_process(sandbox_id: SandboxId, pid: int, svc: Svc, caller: Caller) -> Response:
    await _processes(svc).kill(caller.tenant, sandbox_id, pid)
    return Response(status_code=204)
