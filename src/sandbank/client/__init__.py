"""The Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio).

Both speak only HTTP to a sandbank server; ``_sync`` is generated from
``_async`` by ``scripts/gen_sync.py``.
"""

from sandbank.client._async import AsyncAdminClient, AsyncSandbox, AsyncSnapshots, AsyncTemplates
from sandbank.client._async.process import CommandHandle as AsyncCommandHandle
from sandbank.client._async.pty import AsyncPtyHandle
from sandbank.client._sync import AdminClient, Sandbox, Snapshots, Templates
from sandbank.client._sync.process import CommandHandle
from sandbank.client._sync.pty import PtyHandle
from sandbank.client.exceptions import CommandExitError, ServerUnreachable
from sandbank.client.models import (
    ALL_TRAFFIC,
    ApiKeyInfo,
    CommandResult,
    EntryInfo,
    NetworkInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
    SnapshotInfo,
    TemplateBuild,
    TemplateInfo,
)
from sandbank.client.pty_types import PtyInfo, PtyResult, PtySize
from sandbank.client.watch import AsyncWatchHandle, FilesystemEvent, WatchHandle

__all__ = [
    "ALL_TRAFFIC",
    "AdminClient",
    "ApiKeyInfo",
    "AsyncAdminClient",
    "AsyncCommandHandle",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSnapshots",
    "AsyncTemplates",
    "AsyncWatchHandle",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "FilesystemEvent",
    "NetworkInfo",
    "ProcessInfo",
    "PtyHandle",
    "PtyInfo",
    "PtyResult",
    "PtySize",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerUnreachable",
    "SnapshotInfo",
    "Snapshots",
    "TemplateBuild",
    "TemplateInfo",
    "Templates",
    "WatchHandle",
]
