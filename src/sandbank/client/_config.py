"""Where the SDK finds its server and key, and how it reads the server's errors.

Shared by the async SDK and its generated sync twin, so both resolve settings
and rebuild errors the same way.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

from sandbank import __version__, errors

DEFAULT_BASE_URL = "http://127.0.0.1:7420"
URL_ENV = "SANDBANK_URL"
API_KEY_ENV = "SANDBANK_API_KEY"

#: Seconds to wait for the TCP connection; a local server answers at once.
CONNECT_TIMEOUT = 10.0
#: Seconds to wait for any one read or write of an ordinary request.
REQUEST_TIMEOUT = 60.0
#: Creating a sandbox may unpack a template first.
CREATE_TIMEOUT = 600.0
#: Added to a command's own limit so the server reports the timeout, not the socket.
EXEC_TIMEOUT_MARGIN = 30.0

#: Error bodies are quoted in messages; a proxy's HTML page should not flood them.
_MAX_QUOTED_BODY = 500


@dataclass(frozen=True)
class ConnectionConfig:
    base_url: str
    api_key: str

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"sandbank-python/{__version__}",
        }


def resolve_config(api_key: str | None = None, base_url: str | None = None) -> ConnectionConfig:
    """Explicit arguments first, then ``SANDBANK_URL`` / ``SANDBANK_API_KEY``."""
    url = (base_url or os.environ.get(URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise errors.BadRequest(f"server URL {url!r} must start with http:// or https://")
    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise errors.Unauthorized(
            f"no API key: pass api_key=... or set {API_KEY_ENV} "
            f"(an admin creates keys with `sandbank keys create --tenant NAME`)"
        )
    return ConnectionConfig(base_url=url, api_key=key)


def _fallback_code(status: int) -> str:
    """The code of the broadest error class for ``status``, for bodies without one."""
    matches = [cls for cls in errors.ERRORS_BY_CODE.values() if cls.status == status]
    matches.sort(key=lambda cls: len(cls.__mro__))
    return matches[0].code if matches else f"http_{status}"


def error_from_response(status: int, body: bytes, reason: str) -> errors.SandbankError:
    """Rebuild the error class the server raised from its ``{"code", "message"}`` body.

    Bodies from something other than sandbank (a proxy, a framework default)
    still map to the class of their HTTP status.
    """
    try:
        payload: Any = json.loads(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("code"), str):
        message = str(payload.get("message") or reason or f"HTTP {status}")
        details = {k: v for k, v in payload.items() if k not in ("code", "message", "status")}
        return errors.from_status(status, payload["code"], message, **details)
    if isinstance(payload, dict) and "detail" in payload:
        message = str(payload["detail"])
    else:
        text = body.decode("utf-8", errors="replace").strip()
        message = text[:_MAX_QUOTED_BODY] or reason or f"HTTP {status}"
    return errors.from_status(status, _fallback_code(status), message)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA bundle) costs
    about 20 ms, which every ``Sandbox.create`` would otherwise pay again."""
    return ssl.create_default_context()
