"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio).

Both speak only HTTP to a sandbank server; ``_sync`` is generated from
``_async`` by ``scripts/gen_sync.py``.
"""

from sandbank.client._async import AsyncAdminClient, AsyncSandbox
from sandbank.client._sync import AdminClient, Sandbox
from sandbank.client.exceptions import CommandExitError, ServerUnreachable
from sandbank.client.models import (
    ApiKeyInfo,
    CommandResult,
    EntryInfo,
    SandboxInfo,
    SandboxMetrics,
    TemplateInfo,
)

__all__ = [
    "AdminClient",
    "ApiKeyInfo",
    "AsyncAdminClient",
    "AsyncSandbox",
    "CommandExitError",
    "CommandResult",
    "EntryInfo",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerUnreachable",
    "TemplateInfo",
]
