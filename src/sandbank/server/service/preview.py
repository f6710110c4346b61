"""Who may reach a port inside a sandbox through the server, and where it is.

Preview URLs are private: a request carries the sandbox's preview token (an
HMAC of its id under a key kept in the data dir, so nothing is stored per
sandbox and a restart keeps every URL valid) or an API key of the tenant that
owns the sandbox. Everything else, like a sandbox that is gone, pooled or
another tenant's, is "not found": a wrong token must not tell that a sandbox
exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sandbank.errors import SandboxNotFound, ValidationFailed
from sandbank.server.service.lifecycle import SandboxState
from sandbank.server.store.base import Store

MAX_PORT = 65535


def load_secret(path: Path) -> bytes:
    """The signing key, made (mode 0600) on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def check_port(port: int) -> int:
    if not 1 <= port <= MAX_PORT:
        raise ValidationFailed(f"port must be between 1 and {MAX_PORT}, got {port}", field="port")
    return port


class Endpoints(Protocol):
    """The one thing the gate needs of a runtime (``Runtime.endpoint``)."""

    async def endpoint(self, sandbox_id: str, port: int) -> tuple[str, int]: ...


class PreviewGate:
    def __init__(
        self,
        store: Store,
        runtime: Endpoints,
        secret_file: Path,
        touch: Callable[[str], None] | None = None,
    ) -> None:
        #: Called with the sandbox id on every request let through (idle timeouts).
        self._touch = touch
        self._store = store
        self._runtime = runtime
        self._secret_file = secret_file
        self._secret: bytes | None = None

    def token(self, sandbox_id: str) -> str:
        if self._secret is None:
            # Read on first use: the data dir exists only once the server started.
            self._secret = load_secret(self._secret_file)
        digest = hmac.new(self._secret, b"preview:" + sandbox_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:24]).decode()

    def _token_ok(self, sandbox_id: str, token: str) -> bool:
        return hmac.compare_digest(self.token(sandbox_id).encode(), token.encode())

    async def open(
        self, sandbox_id: str, port: int, *, token: str | None, tenant: str | None
    ) -> tuple[str, int]:
        """The host address of ``port`` in the sandbox, if the caller may reach it.

        ``token``: the preview token given; ``tenant``: the tenant of an API key
        given (either one is enough).
        """
        check_port(port)
        record = await self._store.get_sandbox(sandbox_id)
        allowed = record is not None and (
            (token is not None and self._token_ok(sandbox_id, token))
            or (tenant is not None and record.tenant == tenant)
        )
        if record is None or not allowed or record.status != SandboxState.RUNNING:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist", sandbox_id=sandbox_id)
        if self._touch is not None:
            self._touch(sandbox_id)
        return await self._runtime.endpoint(sandbox_id, port)
