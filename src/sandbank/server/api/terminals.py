"""/v1/sandboxes/{id}/pty: terminals, over REST and one WebSocket per session.

Credentials on every route: an API key of the owning tenant (``Authorization:
Bearer`` or ``X-API-Key``), or the sandbox's terminal token (``X-Sandbank-Token``
or ``?token=``, which is what a browser's WebSocket can carry). The WebSocket's
framing is in ``sandbank.protocol.pty_ws`` and docs/terminals.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from sandbank.errors import PayloadTooLarge, SandbankError, ValidationFailed
from sandbank.protocol import pty_ws
from sandbank.protocol.pty_api import CreatePtyRequest, PtyList, PtyOut, ResizePtyRequest
from sandbank.runtime.base import JobInfo
from sandbank.server.api.deps import Services, Svc
from sandbank.server.api.deps import sandbox_id as check_sandbox_id
from sandbank.server.api.processes import process_out
from sandbank.server.service.terminals import PtyParams, Session, TerminalService

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/pty", tags=["terminals"])

TOKEN_HEADER = "x-sandbank-token"
TOKEN_PARAM = "token"
#: Bytes one ``input`` request may carry; a terminal takes keystrokes and pastes.
MAX_INPUT = 1024 * 1024


def terminals(svc: Services) -> TerminalService:
    if svc.terminals is None:
        raise RuntimeError("the terminal service is not wired")
    return svc.terminals


async def caller_tenant(conn: HTTPConnection, svc: Services, sandbox_id: str) -> str:
    """The tenant acting: the API key's, or the sandbox owner's for its token."""
    check_sandbox_id(sandbox_id)
    header = conn.headers.get("authorization")
    key = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            key = value.strip()
    key = key or conn.headers.get("x-api-key")
    if key:
        return (await svc.keys.authenticate(key)).tenant
    token = conn.headers.get(TOKEN_HEADER) or conn.query_params.get(TOKEN_PARAM)
    return await terminals(svc).tenant_for_token(sandbox_id, token)


def pty_out(info: JobInfo) -> PtyOut:
    cols, rows = info.pty or (0, 0)
    return PtyOut(**process_out(info).model_dump(), cols=cols, rows=rows)


@router.post("", status_code=201, response_model=PtyOut)
async def create_pty(
    request: Request, sandbox_id: str, body: CreatePtyRequest, svc: Svc
) -> PtyOut:
    tenant = await caller_tenant(request, svc, sandbox_id)
    params = PtyParams(
        cols=body.cols,
        rows=body.rows,
        cmd=body.cmd,
        command=body.command,
        env=body.env or {},
        cwd=body.cwd,
        user=body.user,
        tag=body.tag,
        timeout=body.timeout,
    )
    return pty_out(await terminals(svc).create(tenant, sandbox_id, params))


@router.get("", response_model=PtyList)
async def list_ptys(request: Request, sandbox_id: str, svc: Svc) -> PtyList:
    tenant = await caller_tenant(request, svc, sandbox_id)
    return PtyList(ptys=[pty_out(i) for i in await terminals(svc).list(tenant, sandbox_id)])


@router.get("/{pid}", response_model=PtyOut)
async def get_pty(request: Request, sandbox_id: str, pid: int, svc: Svc) -> PtyOut:
    tenant = await caller_tenant(request, svc, sandbox_id)
    return pty_out(await terminals(svc).get(tenant, sandbox_id, pid))


@router.post("/{pid}/input", status_code=204)
async def send_input(request: Request, sandbox_id: str, pid: int, svc: Svc) -> Response:
    """The raw body goes to the terminal as typed input."""
    tenant = await caller_tenant(request, svc, sandbox_id)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_INPUT:
            raise PayloadTooLarge(f"terminal input is at most {MAX_INPUT} bytes per request")
    await terminals(svc).send_input(tenant, sandbox_id, pid, bytes(data))
    return Response(status_code=204)


@router.post("/{pid}/resize", response_model=PtyOut)
async def resize_pty(
    request: Request, sandbox_id: str, pid: int, body: ResizePtyRequest, svc: Svc
) -> PtyOut:
    tenant = await caller_tenant(request, svc, sandbox_id)
    service = terminals(svc)
    await service.resize(tenant, sandbox_id, pid, body.cols, body.rows)
    return pty_out(await service.get(tenant, sandbox_id, pid))


@router.post("/{pid}/wait", response_model=PtyOut)
async def wait_pty(
    request: Request,
    sandbox_id: str,
    pid: int,
    svc: Svc,
    timeout: float | None = Query(None, description="Seconds; none or 0 waits for ever."),
) -> PtyOut:
    tenant = await caller_tenant(request, svc, sandbox_id)
    return pty_out(await terminals(svc).wait(tenant, sandbox_id, pid, timeout))


@router.delete("/{pid}", status_code=204)
async def kill_pty(request: Request, sandbox_id: str, pid: int, svc: Svc) -> Response:
    """SIGKILL to every process of the terminal's session."""
    tenant = await caller_tenant(request, svc, sandbox_id)
    await terminals(svc).kill(tenant, sandbox_id, pid)
    return Response(status_code=204)


# -- the WebSocket ---------------------------------------------------------------------


@router.websocket("/{pid}/ws")
async def pty_websocket(websocket: WebSocket, sandbox_id: str, pid: int, offset: int = 0) -> None:
    svc: Services = websocket.app.state.services
    try:
        tenant = await caller_tenant(websocket, svc, sandbox_id)
        session = await terminals(svc).connect(tenant, sandbox_id, pid, offset)
    except SandbankError as exc:
        await deny(websocket, exc)
        return
    await websocket.accept()
    link = _Link(websocket)
    try:
        cols, rows = session.info.pty or (0, 0)
        await link.text(pty_ws.event("ready", pid=pid, cols=cols, rows=rows, offset=offset))
        tasks = [
            asyncio.ensure_future(_output(link, session)),
            asyncio.ensure_future(_input(link, session)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        close = getattr(session.events, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        with contextlib.suppress(Exception):
            await websocket.close()


class _Link:
    """Sends to the client from the output and the input side, one at a time."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._lock = asyncio.Lock()

    async def _send(self, sending: Awaitable[None]) -> None:
        async with self._lock:
            await sending

    async def text(self, text: str) -> None:
        await self._send(self.websocket.send_text(text))

    async def data(self, data: bytes) -> None:
        await self._send(self.websocket.send_bytes(data))

    async def error(self, exc: SandbankError) -> None:
        await self.text(pty_ws.event("error", **exc.to_dict()))


async def _output(link: _Link, session: Session) -> None:
    """The terminal's output to the client, then its exit and a normal close."""
    try:
        async for event in session.events:
            if event.kind == "stdout":
                await link.data(event.data)
            elif event.kind == "truncated":
                await link.text(pty_ws.event("truncated", offset=event.offset))
            elif event.kind == "exit" and event.info is not None:
                info = event.info
                await link.text(
                    pty_ws.event(
                        "exit",
                        exit_code=info.exit_code,
                        signal=info.signal,
                        timed_out=info.timed_out,
                        offset=event.offset,
                    )
                )
                await link.websocket.close(code=1000)
                return
    except SandbankError as exc:  # the agent went away (the sandbox was killed)
        with contextlib.suppress(Exception):
            await link.error(exc)
            await link.websocket.close(code=1011, reason=exc.message[:120])


async def _input(link: _Link, session: Session) -> None:
    """Keystrokes and control frames from the client, in order; returns when it leaves."""
    while True:
        try:
            message = await link.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        try:
            if message.get("bytes") is not None:
                await session.send(message["bytes"])
                continue
            control = pty_ws.parse_control(message.get("text") or "")
            if isinstance(control, pty_ws.Input):
                await session.send(control.data)
            else:
                await session.resize(control.cols, control.rows)
                await link.text(pty_ws.event("resized", cols=control.cols, rows=control.rows))
        except pty_ws.FramingError as exc:
            await link.error(ValidationFailed(str(exc)))
        except SandbankError as exc:
            await link.error(exc)


async def deny(websocket: WebSocket, exc: SandbankError) -> None:
    """Refuse the upgrade with the error's status and JSON body where the server
    can send one, else close with ``4000 + status``."""
    try:
        await websocket.send_denial_response(JSONResponse(exc.to_dict(), status_code=exc.status))
    except RuntimeError:
        await websocket.accept()
        body: dict[str, Any] = exc.to_dict()
        await websocket.send_text(pty_ws.event("error", **body))
        await websocket.close(code=pty_ws.CLOSE_BASE + exc.status, reason=exc.message[:120])
