"""``GET /v1/sandboxes/{id}/exec/ws``: a foreground command over a WebSocket.

Text frames of JSON (see docs/processes.md):

* client, first: the exec request (``cmd`` or ``command``, ``env``, ``cwd``,
  ``user``, ``timeout``), with ``stdin`` a string (input up front) or ``true``
  (open, fed by later frames);
* server: ``start`` (pid), ``stdout``/``stderr``/``truncated`` as in the NDJSON
  stream, then ``exit``, then a normal close (1000);
* client, later: ``{"type": "stdin", "data": "..."}`` (or ``data_b64``, or a
  binary frame of raw bytes), ``{"type": "close_stdin"}``,
  ``{"type": "signal", "signal": "TERM"}``, ``{"type": "kill"}``.

A failed control message answers ``{"type": "error", ...}`` and the stream goes
on; a failure (before the start, or of the stream) sends the error and closes
with 4000 + its HTTP status. A client that leaves before the exit takes the command along.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Mapping
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from sandbank.errors import BadRequest, PayloadTooLarge, SandbankError, ValidationFailed
from sandbank.protocol.api import ExecRequest
from sandbank.server.api.convert import exec_params
from sandbank.server.api.deps import Services, api_key_of
from sandbank.server.api.deps import sandbox_id as check_sandbox_id
from sandbank.server.api.errors import error_response
from sandbank.server.api.processes import MAX_STDIN, unwrap, wire_events
from sandbank.server.service.processes import ProcessService, Started

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["processes"])


class ExecWsRequest(ExecRequest):
    #: A string: input up front; ``true``: open, fed by ``stdin`` frames.
    stdin: str | bool | None = None  # type: ignore[assignment]


def _request(text: str | bytes) -> tuple[ExecWsRequest, bool]:
    try:
        body = ExecWsRequest.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}".lstrip(": ")
            for err in exc.errors()
        )
        raise ValidationFailed(f"the exec request is invalid: {problems}") from None
    open_stdin = body.stdin is True
    if isinstance(body.stdin, bool):
        body = body.model_copy(update={"stdin": None})
    return body, open_stdin


class _Session:
    def __init__(
        self, websocket: WebSocket, service: ProcessService, tenant: str, sandbox: str
    ) -> None:
        self.ws = websocket
        self.service = service
        self.tenant = tenant
        self.sandbox = sandbox
        self._send_lock = anyio.Lock()

    async def send(self, event: dict[str, Any] | bytes) -> None:
        text = (
            event.decode() if isinstance(event, bytes) else json.dumps(event, separators=(",", ":"))
        )
        async with self._send_lock:
            await self.ws.send_text(text)

    async def fail(self, exc: SandbankError) -> None:
        """The error, then a close with 4000 + its status."""
        await self.send({"type": "error", **exc.to_dict()})
        await self.ws.close(code=4000 + exc.status, reason=exc.code)

    async def relay(self, started: Started) -> None:
        try:
            await self._relay(started)
        except BaseExceptionGroup as failed:
            raise unwrap(failed) from None

    async def _relay(self, started: Started) -> None:
        pid = started.info.pid
        async with anyio.create_task_group() as group:

            async def outbound() -> None:
                await self.send({"type": "start", "pid": pid})
                async for event in wire_events(started.events):
                    await self.send(event)
                await self.ws.close(code=1000)
                group.cancel_scope.cancel()

            async def inbound() -> None:
                while True:
                    message = await self.ws.receive()
                    if message["type"] == "websocket.disconnect":
                        group.cancel_scope.cancel()
                        return
                    try:
                        await self.control(pid, message)
                    except SandbankError as exc:
                        await self.send({"type": "error", **exc.to_dict()})

            group.start_soon(outbound)
            group.start_soon(inbound)

    async def control(self, pid: int, message: Mapping[str, Any]) -> None:
        raw = message.get("bytes")
        if raw is not None:
            await self.stdin(pid, raw)
            return
        try:
            frame = json.loads(message.get("text") or "")
        except ValueError:
            raise BadRequest("control messages are JSON objects") from None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "stdin":
            await self.stdin(pid, _data(frame))
        elif kind == "close_stdin":
            await self.service.send_stdin(self.tenant, self.sandbox, pid, b"", close=True)
        elif kind == "signal":
            await self.service.signal(self.tenant, self.sandbox, pid, frame.get("signal", ""))
        elif kind == "kill":
            await self.service.kill(self.tenant, self.sandbox, pid)
        else:
            raise BadRequest(
                f"unknown control message {kind!r}: use stdin, close_stdin, signal or kill"
            )

    async def stdin(self, pid: int, data: bytes) -> None:
        if len(data) > MAX_STDIN:
            raise PayloadTooLarge(
                f"a stdin message carries at most {MAX_STDIN} bytes; send it in parts"
            )
        await self.service.send_stdin(self.tenant, self.sandbox, pid, data)


def _data(frame: dict[str, Any]) -> bytes:
    if "data_b64" in frame:
        try:
            return base64.b64decode(str(frame["data_b64"]), validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"data_b64 is not valid base64: {exc}") from None
    data = frame.get("data", "")
    if not isinstance(data, str):
        raise BadRequest("stdin data is a string (or data_b64 for bytes)")
    return data.encode()


@router.websocket("/exec/ws")
async def exec_ws(websocket: WebSocket, sandbox_id: str) -> None:
    svc: Services = websocket.app.state.services
    try:
        checked = check_sandbox_id(sandbox_id)
        caller = await svc.keys.authenticate(api_key_of(websocket))
    except SandbankError as exc:
        # Refused upgrade: the error's status and JSON body, as on any endpoint.
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    session = _Session(websocket, ProcessService(svc.sandboxes), caller.tenant, checked)
    started: Started | None = None
    try:
        first = await websocket.receive()
        if first["type"] == "websocket.disconnect":
            return
        body, open_stdin = _request(first.get("text") or first.get("bytes") or "")
        started = await session.service.run_streamed(
            caller.tenant, checked, exec_params(body), open_stdin=open_stdin
        )
        await session.relay(started)
    except SandbankError as exc:
        # Before the start, or mid-stream (the sandbox went away): say why.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await session.fail(exc)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away (RuntimeError: a send after its close)
    finally:
        if started is not None:
            with anyio.CancelScope(shield=True):
                await started.close()  # before the exit: kills the command
