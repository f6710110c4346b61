"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio).

Both speak only HTTP to a sandbank server; ``_sync`` is generated from
``_async`` by ``scripts/gen_sync.py``.
"""

from sandbank.client._async import AsyncAdminClient, AsyncSandbox, AsyncTemplates
from sandbank.client._async.process import CommandHandle as AsyncCommandHandle
from sandbank.client._sync import AdminClient, Sandbox, Templates
from sandbank.client._sync.process import CommandHandle, ProcessInfo
from sandbank.client.exceptions import CommandExitError, ServerUnreachable
from sandbank.client.models import (
    ALL_TRAFFIC,
    ApiKeyInfo,
    CommandResult,
    EntryInfo,
    NetworkInfo,
    SandboxInfo,
    SandboxMetrics,
    TemplateBuild,
    TemplateInfo,
)

__all__ = [
    "ALL_TRAFFIC",
    "AdminClient",
    "ApiKeyInfo",
    "AsyncAdminClient",
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncTemplates",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "NetworkInfo",
    "ProcessInfo",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerUnreachable",
    "TemplateBuild",
    "TemplateInfo",
    "Templates",
]
