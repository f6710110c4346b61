"""The browser terminal: ``GET /terminal/{id}?token=...`` (the sandbox's
``terminal_url``), an xterm.js page that opens a login shell through the
terminal routes with the token it was given, and its assets.

xterm.js is not in the repository and never comes from a CDN: scripts/install.sh
fetches pinned, integrity-checked releases from the npm registry into
``dashboard/vendor`` (see scripts/fetch_xterm.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from sandbank.errors import NotFound, SandboxUnavailable
from sandbank.server.api.deps import Svc
from sandbank.server.api.terminals import TOKEN_PARAM, terminals

router = APIRouter(prefix="/terminal", tags=["terminals"], include_in_schema=False)

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
VENDOR = DASHBOARD / "vendor"
#: name -> (file, media type); nothing else is served.
ASSETS = {
    "terminal.js": (DASHBOARD / "terminal.js", "text/javascript; charset=utf-8"),
    "xterm.js": (VENDOR / "xterm.js", "text/javascript; charset=utf-8"),
    "xterm.css": (VENDOR / "xterm.css", "text/css; charset=utf-8"),
    "addon-fit.js": (VENDOR / "addon-fit.js", "text/javascript; charset=utf-8"),
}
#: The page's own origin only; xterm.js sets inline styles.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    # The token is in the URL: it must not leave in a Referer or stay in a cache.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/assets/{name}")
async def terminal_asset(name: str) -> FileResponse:
    entry = ASSETS.get(name)
    if entry is None:
        raise NotFound(f"no terminal asset {name!r}")
    path, media_type = entry
    if not path.is_file():
        raise SandboxUnavailable(
            f"the browser terminal's {name} is not installed; run scripts/install.sh"
        )
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@router.get("/{sandbox_id}", response_class=HTMLResponse)
async def terminal_page(request: Request, sandbox_id: str, svc: Svc) -> HTMLResponse:
    """The page, for the holder of the sandbox's terminal token only."""
    await terminals(svc).tenant_for_token(sandbox_id, request.query_params.get(TOKEN_PARAM))
    html = (DASHBOARD / "terminal.html").read_text()
    return HTMLResponse(html, headers=_PAGE_HEADERS)
