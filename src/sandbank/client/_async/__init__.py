"""The SDK's classes; ``_async`` is the source, ``_sync`` its generated blocking twin."""

from .admin import AsyncAdminClient
from .commands import AsyncCommands
from .files import AsyncFilesystem
from .sandbox import AsyncSandbox
from .snapshots import AsyncSnapshots
from .templates import AsyncTemplates

__all__ = [
    "AsyncAdminClient",
    "AsyncCommands",
    "AsyncFilesystem",
    "AsyncSandbox",
    "AsyncSnapshots",
    "AsyncTemplates",
]
