"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio).

Both speak only HTTP to a sandbank server; ``_sync`` is generated from
``_async`` by ``scripts/gen_sync.py``.
"""

from sandbank.client._async import AsyncAdminClient, AsyncSandbox
from sandbank.client._async.process import CommandHandle as AsyncCommandHandle
from sandbank.client._sync import AdminClient, Sandbox
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
    TemplateInfo,
)
from sandbank.client.watch import AsyncWatchHandle, FilesystemEvent, WatchHandle

__all__ = [
    "ALL_TRAFFIC",
    "AdminClient",
    "ApiKeyInfo",
    "AsyncAdminClient",
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncWatchHandle",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "FilesystemEvent",
    "NetworkInfo",
    "ProcessInfo",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerUnreachable",
    "TemplateInfo",
    "WatchHandle",
]
