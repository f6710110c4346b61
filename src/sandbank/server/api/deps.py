"""Request-scoped dependencies: the services and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from sandbank.errors import ValidationFailed
from sandbank.protocol.api import SANDBOX_ID_RE
from sandbank.server.service.keys import KeyService, Principal
from sandbank.server.service.preview import PreviewGate
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.service.templates import TemplateService
from sandbank.server.service.terminals import TerminalService


@dataclass
class Services:
    sandboxes: SandboxService
    keys: KeyService
    telemetry: Telemetry
    base_url: str
    #: Preview URLs (ports of sandboxes through the server); None: not offered.
    preview: PreviewGate | None = None
    #: Terminals and the browser terminal's tokens.
    terminals: TerminalService | None = None

    def terminal_token(self, sandbox_id: str) -> str | None:
        return None if self.terminals is None else self.terminals.token(sandbox_id)
    templates: TemplateService | None = None


# Dependencies are coroutines: FastAPI runs a plain function in its thread
# pool, a thread hop of 0.1-0.5 ms on every request for what is a lookup.
async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def api_key_of(request: HTTPConnection) -> str | None:
    """The API key of a request or a WebSocket upgrade."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key")


async def principal(request: Request, svc: Annotated[Services, Depends(services)]) -> Principal:
    return await svc.keys.authenticate(api_key_of(request))


def sandbox_id(sandbox_id: str) -> str:
    if not SANDBOX_ID_RE.match(sandbox_id):
        raise ValidationFailed(
            f"sandbox id {sandbox_id!r} is malformed: ids are 1-64 characters of a-z, 0-9, '_' "
            "and '-'",
            field="sandbox_id",
        )
    return sandbox_id


_check_sandbox_id = sandbox_id


async def sandbox_id_param(sandbox_id: str) -> str:
    """``sandbox_id`` as a dependency, on the event loop (see ``services``)."""
    return _check_sandbox_id(sandbox_id)


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(principal)]
SandboxId = Annotated[str, Depends(sandbox_id_param)]
