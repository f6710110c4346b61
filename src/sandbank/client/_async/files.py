"""Files inside a sandbox; transfers stream in chunks both ways."""

from __future__ import annotations

import builtins
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Literal, Protocol, overload, runtime_checkable

from sandbank import errors

from ..models import EntryInfo
from ._http import AsyncApiConnection

#: Bytes read from a local file object per chunk of an upload.
CHUNK_SIZE = 256 * 1024


@runtime_checkable
class Readable(Protocol):
    """Anything with ``read(size)``: open files, sockets' makefile(), BytesIO."""

    def read(self, size: int, /) -> bytes | str: ...


#: What ``write`` accepts; only ``str`` and bytes are ever held whole.
WriteData = str | bytes | bytearray | memoryview | Readable | AsyncIterable[bytes] | Iterable[bytes]


async def _chunks(data: Readable | AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, Readable):
        while chunk := data.read(CHUNK_SIZE):
            yield chunk.encode() if isinstance(chunk, str) else chunk
    elif isinstance(data, AsyncIterable):
        async for chunk in data:
            yield chunk
    else:
        for chunk in data:
            yield chunk


class AsyncFilesystem:
    def __init__(self, connection: AsyncApiConnection, sandbox_path: str) -> None:
        self._connection = connection
        self._path = f"{sandbox_path}/files"

    @overload
    async def read(self, path: str, format: Literal["text"] = "text") -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    async def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        """The whole file; text is decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        if format not in ("text", "bytes"):
            raise ValueError(f"format must be 'text' or 'bytes', not {format!r}")
        response = await self._connection.request("GET", self._path, params={"path": path})
        if format == "bytes":
            return response.content
        return response.content.decode("utf-8", errors="replace")

    def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """The file's content chunk by chunk; the request starts at the first iteration."""
        return self._connection.stream_bytes("GET", self._path, params={"path": path})

    async def write(self, path: str, data: WriteData, user: str | None = None) -> EntryInfo:
        """Create or replace ``path`` with ``data`` and return the new file's entry.

        ``data`` may be text (written as UTF-8), bytes, a file object opened
        for reading, or an iterable of byte chunks (with the asyncio SDK an
        async iterable too); file objects and iterables are streamed, never
        read whole.
        """
        content: bytes | AsyncIterable[bytes]
        if isinstance(data, str):
            content = data.encode()
        elif isinstance(data, bytes | bytearray | memoryview):
            content = bytes(data)
        else:
            content = _chunks(data)
        params = {"path": path}
        if user is not None:
            params["user"] = user
        entry = await self._connection.request_json(
            "PUT", self._path, params=params, content=content
        )
        return EntryInfo.from_dict(entry)

    async def list(self, path: str, depth: int = 1) -> builtins.list[EntryInfo]:
        """Entries under the directory ``path``, ``depth`` levels down."""
        data = await self._connection.request_json(
            "GET", f"{self._path}/list", params={"path": path, "depth": depth}
        )
        return [EntryInfo.from_dict(entry) for entry in data["entries"]]

    async def stat(self, path: str) -> EntryInfo:
        data = await self._connection.request_json(
            "GET", f"{self._path}/stat", params={"path": path}
        )
        return EntryInfo.from_dict(data)

    async def get_info(self, path: str) -> EntryInfo:
        """Same as ``stat``."""
        return await self.stat(path)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except errors.FileNotFound:
            return False
        return True

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Delete a file, or a directory (non-empty ones only with ``recursive``)."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        await self._connection.request("DELETE", self._path, params=params)

    async def rename(self, src: str, dst: str) -> EntryInfo:
        """Move ``src`` to ``dst`` and return the entry at its new place."""
        data = await self._connection.request_json(
            "POST", f"{self._path}/move", json={"source": src, "destination": dst}
        )
        return EntryInfo.from_dict(data)

    async def make_dir(self, path: str) -> bool:
        """Create ``path`` with its parents; ``False`` when it already existed."""
        data = await self._connection.request_json(
            "POST", f"{self._path}/mkdir", json={"path": path}
        )
        return bool(data["created"])

    async def download(self, path: str, local_path: str | os.PathLike[str]) -> int:
        """Stream ``path`` into the local file ``local_path``; returns the bytes written.

        The data lands in a hidden file beside ``local_path`` first and is
        renamed over it when complete, so a failed transfer never leaves a
        truncated file behind.
        """
        target = Path(local_path)
        if target.is_dir():
            raise errors.IsADirectory(f"{target} is a local directory; name the file to write")
        if not target.parent.is_dir():
            raise errors.FileNotFound(f"local directory {target.parent} does not exist")
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        written = 0
        try:
            with partial.open("xb") as out:
                async for chunk in self.read_stream(path):
                    out.write(chunk)
                    written += len(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    async def upload(
        self, local_path: str | os.PathLike[str], path: str, user: str | None = None
    ) -> EntryInfo:
        """Stream the local file ``local_path`` to ``path``."""
        with open(local_path, "rb") as source:
            return await self.write(path, source, user=user)
