"""File trees, batches, ownership, search and watches inside a running sandbox.

The policy between the HTTP layer and the sandbox's channel: which runtime
offers these operations, the bounds a request may ask for, and how a watch
ends. Paths are never resolved here: they travel to the agent as given.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sandbank.errors import SandbankError, Unsupported, ValidationFailed
from sandbank.runtime.base import FileEntry
from sandbank.runtime.filetree import FileTreeChannel, WatchEvent
from sandbank.server.service.sandboxes import SandboxService

#: Matches ``find`` returns at most (the agent's own cap); the default is lower.
MAX_FIND_LIMIT = 10_000
DEFAULT_FIND_LIMIT = 1_000
User = str


@dataclass(frozen=True)
class WatchLine:
    """One line of a watch stream as the API sends it."""

    event: str
    fields: dict[str, object]


class FileTreeService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def channel(self, tenant: str, sandbox_id: str) -> FileTreeChannel:
        channel = await self._sandboxes.files(tenant, sandbox_id)
        if not isinstance(channel, FileTreeChannel):
            raise Unsupported(
                "this server's runtime has no directory transfers, batches, search or watches"
            )
        return channel

    async def read_text(
        self, tenant: str, sandbox_id: str, path: str, encoding: str
    ) -> tuple[str, AsyncIterator[bytes]]:
        """The encoding's canonical name (for the Content-Type) and the file's bytes."""
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise ValidationFailed(
                f"unknown text encoding {encoding!r}", field="encoding"
            ) from None
        channel = await self.channel(tenant, sandbox_id)
        return name, channel.read_text(path, name)

    async def read_tar(self, tenant: str, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        return (await self.channel(tenant, sandbox_id)).read_tar(path)

    async def write_tar(
        self,
        tenant: str,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: User,
        overwrite: bool,
    ) -> FileEntry:
        channel = await self.channel(tenant, sandbox_id)
        return await channel.write_tar(path, chunks, user=user, overwrite=overwrite)

    async def write_files(
        self, tenant: str, sandbox_id: str, chunks: AsyncIterator[bytes], *, user: User
    ) -> list[FileEntry]:
        channel = await self.channel(tenant, sandbox_id)
        return await channel.write_files(chunks, user=user)

    async def chmod(
        self, tenant: str, sandbox_id: str, path: str, mode: int, *, user: User
    ) -> FileEntry:
        if not 0 <= mode <= 0o7777:
            raise ValidationFailed(
                f"mode must be between 0 and 0o7777, got {mode:#o}", field="mode"
            )
        return await (await self.channel(tenant, sandbox_id)).chmod(path, mode, user=user)

    async def chown(
        self,
        tenant: str,
        sandbox_id: str,
        path: str,
        owner: str | int | None,
        group: str | int | None,
        *,
        recursive: bool,
        user: User,
    ) -> FileEntry:
        if owner is None and group is None:
            raise ValidationFailed("name an owner, a group or both", field="owner")
        channel = await self.channel(tenant, sandbox_id)
        return await channel.chown(path, owner, group, recursive=recursive, user=user)

    async def find(
        self, tenant: str, sandbox_id: str, path: str, pattern: str, *, limit: int, user: User
    ) -> list[FileEntry]:
        if not 1 <= limit <= MAX_FIND_LIMIT:
            raise ValidationFailed(
                f"limit must be between 1 and {MAX_FIND_LIMIT}, got {limit}", field="limit"
            )
        channel = await self.channel(tenant, sandbox_id)
        return await channel.find(path, pattern, limit=limit, user=user)

    async def watch(
        self, tenant: str, sandbox_id: str, path: str, *, recursive: bool, user: User
    ) -> AsyncIterator[WatchLine]:
        """The watch's lines, its ``start`` already received: a missing path or a
        file raises here, before any line. Closing the iterator stops the watch."""
        channel = await self.channel(tenant, sandbox_id)
        events = channel.watch(path, recursive=recursive, user=user)
        try:
            first = await anext(events)
        except BaseException:
            await _close(events)
            raise
        return _lines(first, events)


async def _lines(first: WatchEvent, events: AsyncIterator[WatchEvent]) -> AsyncIterator[WatchLine]:
    try:
        yield WatchLine("start", {"path": first.name})
        async for event in events:
            if event.kind == "fs":
                yield WatchLine(
                    "fs", {"type": event.type, "name": event.name, "is_dir": event.is_dir}
                )
            elif event.kind == "end":
                yield WatchLine("end", {"reason": event.reason})
            else:
                yield WatchLine(event.kind, {})
    except SandbankError as exc:
        # The sandbox went away mid-watch: the stream says so instead of just stopping.
        yield WatchLine("error", exc.to_dict())
    finally:
        await _close(events)


async def _close(events: AsyncIterator[WatchEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
