"""What a channel offers beyond single files: directory trees as tar streams,
batches, ownership, search and watches.

A separate Protocol from ``SandboxChannel``: a runtime may lack it, and the
service then answers ``unsupported`` plainly instead of every runtime having
to carry it. (The fake runtime has it over its in-memory files: fake_files.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from sandbank.runtime.base import FileEntry

WatchEventType = Literal["create", "write", "remove", "rename", "chmod"]


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch. ``kind`` is ``start`` (first, once the watch is
    set up; ``name`` is the watched directory's absolute path), ``fs`` (then
    ``type``, ``name`` relative to the watched directory, ``is_dir``),
    ``keepalive``, ``overflow`` (the kernel dropped events) or ``end`` (the
    watched directory went away; ``reason``)."""

    kind: str
    type: WatchEventType | None = None
    name: str | None = None
    is_dir: bool = False
    reason: str | None = None


class SizedStream(AsyncIterator[bytes]):
    """A download's chunks, and their total length when it is known by the time
    the first chunk is out: ``known``, set by whoever produces the chunks, or
    else that of ``source``, the stream these chunks pass on. The HTTP layer
    then states a Content-Length instead of framing every chunk."""

    def __init__(self, chunks: AsyncIterator[bytes] | None = None, source: object = None) -> None:
        self.chunks = chunks
        self.source = source
        self.known: int | None = None

    @property
    def size(self) -> int | None:
        if self.known is not None:
            return self.known
        size = getattr(self.source, "size", None)
        return size if isinstance(size, int) else None

    async def __anext__(self) -> bytes:
        assert self.chunks is not None
        return await anext(self.chunks)


@runtime_checkable
class FileTreeChannel(Protocol):
    def read_text(self, path: str, encoding: str) -> AsyncIterator[bytes]:
        """Like ``read_file``, but ``NotText`` before the first chunk unless the
        whole file decodes as ``encoding``."""
        ...

    def read_tar(self, path: str) -> AsyncIterator[bytes]:
        """The directory ``path`` as a tar stream (names relative to it)."""
        ...

    async def write_tar(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        overwrite: bool = False,
    ) -> FileEntry:
        """Unpack a tar stream as the directory ``path``; all or nothing."""
        ...

    async def write_files(
        self, chunks: AsyncIterator[bytes], *, user: str = "user"
    ) -> list[FileEntry]:
        """Write the regular files of a tar stream, each named by its destination
        path; all or nothing."""
        ...

    async def chmod(self, path: str, mode: int, *, user: str = "user") -> FileEntry: ...

    async def chown(
        self,
        path: str,
        owner: str | int | None,
        group: str | int | None,
        *,
        recursive: bool = False,
        user: str = "user",
    ) -> FileEntry: ...

    async def find(
        self, path: str, pattern: str, *, limit: int, user: str = "user"
    ) -> list[FileEntry]: ...

    def watch(
        self, path: str, *, recursive: bool = False, user: str = "user"
    ) -> AsyncIterator[WatchEvent]:
        """A ``start`` event, then events until the iterator is closed; a missing
        path raises before ``start``."""
        ...
