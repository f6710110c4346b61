"""Preview URLs: any TCP port a sandbox listens on, reached through the server.

Two spellings of one route: ``/v1/sandboxes/{id}/ports/{port}/{path}``, and a
Host header ``{port}-{id}.localhost[:server_port]`` (``PreviewHosts`` rewrites
it to the first), so a web app in the sandbox can be served at its own origin
with absolute links intact. HTTP is streamed both ways; WebSocket upgrades are
relayed. Credentials: the sandbox's preview token (header ``X-Sandbank-Token``,
query parameter ``sandbank_token``, or the cookie a query token leaves so that
a page's own later requests carry it) or an API key of the owning tenant; they
are removed before the request goes on to the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sandbank.errors import PortUnreachable, SandbankError, SandboxNotFound, Unauthorized
from sandbank.protocol.api import PreviewOut
from sandbank.server.api.deps import Caller, SandboxId, Services, Svc

router = APIRouter(tags=["preview"])

PREFIX = "/v1/sandboxes/{sandbox_id}/ports/{port}"
TOKEN_HEADER = "x-sandbank-token"
TOKEN_PARAM = "sandbank_token"
#: Keeps a token given in the query for the page's later requests (its assets).
COOKIE = "sandbank_preview"
#: Scope key marking a request that came in through the ``{port}-{id}.localhost`` form.
HOST_FORM = "sandbank.preview_host"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Headers of one hop only (RFC 9110 7.6.1), plus what we set ourselves.
_HOP = frozenset(
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length", TOKEN_HEADER]
)  # fmt: skip
_HOST = re.compile(r"^(\d{1,5})-([a-z0-9][a-z0-9_-]{0,63})\.localhost(:\d+)?$")

_client: httpx.AsyncClient | None = None


def client() -> httpx.AsyncClient:
    """One pool of upstream connections; no read timeout (streams may idle); no
    cookie jar (cookies travel between the caller and the sandbox, untouched)."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10, read=None, write=60, pool=10),
            follow_redirects=False,
            trust_env=False,
            # Shared by every caller: it must never keep a cookie of one for the next.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
    return _client


@dataclass(frozen=True)
class _Access:
    host: str
    port: int
    #: The API key was the credential: it is not passed on.
    used_key: bool
    #: The token came in the query: a cookie keeps it for the page's next requests.
    token_to_keep: str | None


async def _access(conn: HTTPConnection, svc: Services, sandbox_id: str, port: int) -> _Access:
    from_query = conn.query_params.get(TOKEN_PARAM)
    token = conn.headers.get(TOKEN_HEADER) or from_query or conn.cookies.get(COOKIE)
    tenant = None
    if token is None:
        api_key = _bearer_of(conn.headers)
        if api_key is None:
            raise Unauthorized(
                f"give the sandbox's preview token ({TOKEN_HEADER} header or {TOKEN_PARAM} "
                "query parameter) or an API key of its tenant"
            )
        tenant = (await svc.keys.authenticate(api_key)).tenant
    if svc.preview is None:
        raise SandboxNotFound(f"sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id)
    host, target = await svc.preview.open(sandbox_id, port, token=token, tenant=tenant)
    return _Access(host, target, token is None, from_query)


def _cookie(conn: HTTPConnection, sandbox_id: str, port: int, token: str) -> str:
    """Scoped to the preview's own origin (host form) or path: no other page sees it."""
    path = "/" if conn.scope.get(HOST_FORM) else f"/v1/sandboxes/{sandbox_id}/ports/{port}/"
    return f"{COOKIE}={token}; Path={path}; HttpOnly; SameSite=Lax"


def _without_our_cookie(value: str) -> str:
    kept = [c for c in value.split(";") if c.strip().split("=", 1)[0] != COOKIE]
    return ";".join(kept).strip()


def _bearer_of(headers: Any) -> str | None:
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return str(value.strip())
    key = headers.get("x-api-key")
    return str(key) if key else None


def _upstream_query(query: Any) -> str:
    return str(httpx.QueryParams([(k, v) for k, v in query.multi_items() if k != TOKEN_PARAM]))


def _forward_headers(headers: Any, dropped_auth: bool, client_host: str | None) -> list[Any]:
    out = [(k, v) for k, v in headers.items() if k.lower() not in _HOP]
    out = [(k, _without_our_cookie(v) if k.lower() == "cookie" else v) for k, v in out]
    out = [(k, v) for k, v in out if v or k.lower() != "cookie"]
    if dropped_auth:
        out = [(k, v) for k, v in out if k.lower() not in ("authorization", "x-api-key")]
    if client_host:
        out.append(("x-forwarded-for", client_host))
    if "host" in headers:
        out.append(("x-forwarded-host", headers["host"]))
    return out


def unreachable(sandbox_id: str, port: int, exc: Exception) -> PortUnreachable:
    return PortUnreachable(
        f"nothing answers on port {port} in sandbox {sandbox_id}: {type(exc).__name__}",
        sandbox_id=sandbox_id,
        port=port,
    )


@router.get("/v1/sandboxes/{sandbox_id}/preview", response_model=PreviewOut)
async def preview_info(sandbox_id: SandboxId, svc: Svc, caller: Caller) -> PreviewOut:
    """The sandbox's preview token and URL templates (``{port}`` to fill in)."""
    record = await svc.sandboxes.get(caller.tenant, sandbox_id)
    if svc.preview is None:
        raise SandboxNotFound(f"sandbox {sandbox_id} has no preview URLs on this server")
    token = svc.preview.token(record.id)
    base = svc.base_url
    scheme, _, rest = base.partition("://")
    server_port = rest.rsplit(":", 1)[1] if ":" in rest else ""
    return PreviewOut(
        token=token,
        url=f"{base}/v1/sandboxes/{record.id}/ports/{{port}}/?{TOKEN_PARAM}={token}",
        host_url=f"{scheme}://{{port}}-{record.id}.localhost"
        + (f":{server_port}" if server_port else "")
        + f"/?{TOKEN_PARAM}={token}",
    )


@router.api_route(PREFIX, methods=METHODS, include_in_schema=False)
@router.api_route(PREFIX + "/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy_http(
    request: Request, svc: Svc, sandbox_id: str, port: int, path: str = ""
) -> Response:
    access = await _access(request, svc, sandbox_id, port)
    url = f"http://{access.host}:{access.port}/{path}"
    query = _upstream_query(request.query_params)
    headers = _forward_headers(
        request.headers, access.used_key, request.client.host if request.client else None
    )
    # A body of known length is sent as is (many dev servers refuse chunked uploads);
    # a request without a body must not gain an empty chunked one: servers that never
    # read it close with unread input, and the kernel's reset cuts their response short.
    body: Any = None
    if "content-length" in request.headers:
        body = await request.body()
    elif "transfer-encoding" in request.headers:
        body = request.stream()
    upstream = client().build_request(
        request.method, url, params=query or None, headers=headers, content=body
    )
    try:
        response = await client().send(upstream, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
        raise unreachable(sandbox_id, port, exc) from exc
    streamed = StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        background=BackgroundTask(response.aclose),
    )
    # Raw pairs: repeated headers (several Set-Cookie) stay as they were.
    streamed.raw_headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.multi_items()
        if k.lower() not in _HOP
    ]
    if access.token_to_keep:
        cookie = _cookie(request, sandbox_id, port, access.token_to_keep)
        streamed.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
    return streamed


@router.websocket(PREFIX)
@router.websocket(PREFIX + "/{path:path}")
async def proxy_websocket(websocket: WebSocket, sandbox_id: str, port: int, path: str = "") -> None:
    # Not a dependency: the services dependency takes an HTTP request.
    svc: Services = websocket.app.state.services
    try:
        access = await _access(websocket, svc, sandbox_id, port)
    except SandbankError as exc:
        await _deny(websocket, exc)
        return
    query = _upstream_query(websocket.query_params)
    url = f"ws://{access.host}:{access.port}/{path}" + (f"?{query}" if query else "")
    skip = {*_HOP, "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
            "sec-websocket-protocol"}  # fmt: skip
    headers = _forward_headers(websocket.headers, access.used_key, None)
    headers = [(k, v) for k, v in headers if k.lower() not in skip]
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    try:
        upstream = await ws_connect(
            url,
            additional_headers=headers,
            subprotocols=[p for p in protocols if p] or None,  # type: ignore[misc]
            max_size=None,
            open_timeout=10,
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        await _deny(websocket, unreachable(sandbox_id, port, exc))
        return
    async with upstream:
        await websocket.accept(subprotocol=upstream.subprotocol)
        await _relay(websocket, upstream)


async def _relay(websocket: WebSocket, upstream: Any) -> None:
    async def inbound() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text", ""))

    async def outbound() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in upstream:
                if isinstance(data, bytes):
                    await websocket.send_bytes(data)
                else:
                    await websocket.send_text(data)

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _deny(websocket: WebSocket, exc: SandbankError) -> None:
    """Refuse the upgrade with the error's status and JSON body where the server
    can send one, else close with a policy-violation code."""
    try:
        await websocket.send_denial_response(JSONResponse(exc.to_dict(), status_code=exc.status))
    except RuntimeError:
        await websocket.close(code=1008, reason=exc.message[:120])


class PreviewHosts:
    """ASGI middleware: a request to ``{port}-{id}.localhost`` goes to that port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
            match = _HOST.match(host)
            if match:
                port, sandbox_id = match.group(1), match.group(2)
                path = f"/v1/sandboxes/{sandbox_id}/ports/{port}{scope.get('path') or '/'}"
                scope = {**scope, "path": path, "raw_path": path.encode(), HOST_FORM: True}
        await self.app(scope, receive, send)
