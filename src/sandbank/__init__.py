"""sandbank: self-hosted sandboxes for AI agents.

    from sandbank import Sandbox

    sbx = Sandbox.create()
    print(sbx.commands.run("python3 -c 'print(40+2)'").stdout)
    sbx.kill()

The SDK classes load on first use, so ``import sandbank.errors`` (the agent
inside every sandbox does it) needs nothing beyond the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from sandbank.errors import (
    BadRequest,
    Conflict,
    DiskFull,
    FileExists,
    FileNotFound,
    Forbidden,
    InvalidPath,
    InvalidState,
    IsADirectory,
    KeyNotFound,
    NotADirectory,
    NotFound,
    NotText,
    PayloadTooLarge,
    PermissionDenied,
    ProcessNotFound,
    QuotaExceeded,
    RuntimeFailure,
    SandbankError,
    SandboxNotFound,
    SandboxNotReady,
    SandboxPaused,
    SandboxUnavailable,
    SnapshotNotFound,
    TemplateBuildFailed,
    TemplateNotFound,
    Timeout,
    Unauthorized,
    Unsupported,
    ValidationFailed,
)

if TYPE_CHECKING:
    from sandbank.client import (
        AdminClient,
        ApiKeyInfo,
        AsyncAdminClient,
        AsyncCommandHandle,
        AsyncPtyHandle,
        AsyncSandbox,
        AsyncTemplates,
        CommandExitError,
        CommandHandle,
        CommandResult,
        EntryInfo,
        ProcessInfo,
        PtyHandle,
        PtyInfo,
        PtyResult,
        PtySize,
        Sandbox,
        SandboxInfo,
        SandboxMetrics,
        ServerUnreachable,
        SnapshotInfo,
        Snapshots,
        TemplateBuild,
        TemplateInfo,
        Templates,
    )

#: Public names served lazily from ``sandbank.client``.
_CLIENT_NAMES = frozenset(
    {
        "AdminClient",
        "ApiKeyInfo",
        "AsyncAdminClient",
        "AsyncCommandHandle",
        "AsyncPtyHandle",
        "AsyncSandbox",
        "AsyncTemplates",
        "CommandExitError",
        "CommandHandle",
        "CommandResult",
        "EntryInfo",
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
    }
)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import sandbank.client

        value = getattr(sandbank.client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CLIENT_NAMES)


__all__ = [
    "AdminClient",
    "ApiKeyInfo",
    "AsyncAdminClient",
    "AsyncCommandHandle",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncTemplates",
    "BadRequest",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Conflict",
    "DiskFull",
    "EntryInfo",
    "FileExists",
    "FileNotFound",
    "Forbidden",
    "InvalidPath",
    "InvalidState",
    "IsADirectory",
    "KeyNotFound",
    "NotADirectory",
    "NotFound",
    "NotText",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProcessInfo",
    "ProcessNotFound",
    "PtyHandle",
    "PtyInfo",
    "PtyResult",
    "PtySize",
    "QuotaExceeded",
    "RuntimeFailure",
    "SandbankError",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxNotFound",
    "SandboxNotReady",
    "SandboxPaused",
    "SandboxUnavailable",
    "ServerUnreachable",
    "SnapshotInfo",
    "SnapshotNotFound",
    "Snapshots",
    "TemplateBuild",
    "TemplateBuildFailed",
    "TemplateInfo",
    "TemplateNotFound",
    "Templates",
    "Timeout",
    "Unauthorized",
    "Unsupported",
    "ValidationFailed",
    "__version__",
]
