"""Files inside a sandbox; transfers stream in chunks both ways."""

from __future__ import annotations

import builtins
import os
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Literal, Protocol, Required, TypedDict, overload, runtime_checkable

from sandbank import errors

from .._localfile import BatchedWriter
from .._tar import TarUnpacker, tar_directory, tar_files
from ..models import EntryInfo
from ..watch import AsyncWatchHandle, EventHandler, ExitHandler
from ._http import AsyncApiConnection

#: Bytes read from a local file object per chunk of an upload.
CHUNK_SIZE = 1024 * 1024


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


def _size_of(data: object) -> int | None:
    """Bytes left in a regular file opened for reading; None for anything else."""
    try:
        st = os.fstat(data.fileno())  # type: ignore[attr-defined]
        if not stat.S_ISREG(st.st_mode):
            return None
        return int(st.st_size - data.tell())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


class AsyncFilesystem:
    def __init__(self, connection: AsyncApiConnection, sandbox_path: str) -> None:
        self._connection = connection
        self._path = f"{sandbox_path}/files"

    @overload
    async def read(
        self, path: str, format: Literal["text"] = "text", encoding: str | None = None
    ) -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    async def read(
        self,
        path: str,
        format: Literal["text", "bytes"] = "text",
        encoding: str | None = None,
    ) -> str | bytes:
        """The whole file. Text is decoded as UTF-8 with undecodable bytes as
        U+FFFD; with ``encoding`` the sandbox checks first that the whole file
        decodes and raises ``NotText`` if it does not."""
        if format not in ("text", "bytes"):
            raise ValueError(f"format must be 'text' or 'bytes', not {format!r}")
        params = {"path": path}
        if encoding is not None:
            if format != "text":
                raise ValueError("encoding applies to format='text' only")
            params.update(format="text", encoding=encoding)
        response = await self._connection.request("GET", self._path, params=params)
        if format == "bytes":
            return response.content
        return response.content.decode(encoding or "utf-8", errors="replace")

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
        headers: dict[str, str] = {}
        if isinstance(data, str):
            content = data.encode()
        elif isinstance(data, bytes | bytearray | memoryview):
            content = bytes(data)
        else:
            size = _size_of(data)
            if size is not None:
                # A stated length spares the chunked encoding a copy of every chunk;
                # a file that changes size meanwhile fails the upload, never cuts it.
                headers["Content-Length"] = str(size)
            content = _chunks(data)
        params = {"path": path}
        if user is not None:
            params["user"] = user
        entry = await self._connection.request_json(
            "PUT", self._path, params=params, content=content, headers=headers
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
            with partial.open("xb", buffering=0) as out:
                writer = BatchedWriter(out)
                async for chunk in self.read_stream(path):
                    writer.write(chunk)
                    written += len(chunk)
                writer.flush()
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

    # -- directories, batches, ownership, search, watches ----------------------------

    async def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        path: str,
        *,
        overwrite: bool = False,
        user: str | None = None,
    ) -> EntryInfo:
        """Send the local directory ``local_dir`` as the sandbox directory ``path``,
        streamed as a tar. It appears whole or not at all; an existing directory
        is replaced only with ``overwrite`` (``FileExists`` otherwise)."""
        params: dict[str, str] = {"path": path, "overwrite": "true" if overwrite else "false"}
        if user is not None:
            params["user"] = user
        stream = tar_directory(local_dir)
        entry = await self._connection.request_json(
            "PUT", f"{self._path}/tar", params=params, content=_chunks(stream), timeout=None
        )
        return EntryInfo.from_dict(entry)

    async def download_dir(
        self, path: str, local_dir: str | os.PathLike[str], *, overwrite: bool = False
    ) -> int:
        """Fetch the sandbox directory ``path`` into the local ``local_dir``; returns
        the bytes of file data written. It lands beside ``local_dir`` first and is
        renamed into place when complete; an existing directory is replaced only
        with ``overwrite``."""
        unpacker = TarUnpacker(local_dir, overwrite)
        try:
            chunks = self._connection.stream_bytes(
                "GET", f"{self._path}/tar", params={"path": path}, timeout=None
            )
            async for chunk in chunks:
                unpacker.feed(chunk)
            unpacker.finish()
        finally:
            unpacker.discard()
        return unpacker.bytes

    async def write_files(
        self, files: Iterable[WriteEntry], user: str | None = None
    ) -> builtins.list[EntryInfo]:
        """Write several files in one request: each ``{"path", "data"}`` (plus an
        optional ``"mode"``); ``data`` is text, bytes or a seekable binary file.
        All or nothing: on any failure none of them is written."""
        params = {} if user is None else {"user": user}
        stream = tar_files(_batch(files))
        data = await self._connection.request_json(
            "POST", f"{self._path}/batch", params=params, content=_chunks(stream), timeout=None
        )
        return [EntryInfo.from_dict(entry) for entry in data["entries"]]

    async def chmod(self, path: str, mode: int) -> EntryInfo:
        """Set the permission bits of ``path`` (e.g. ``0o755``)."""
        data = await self._connection.request_json(
            "POST", f"{self._path}/chmod", json={"path": path, "mode": mode}
        )
        return EntryInfo.from_dict(data)

    async def chown(
        self,
        path: str,
        owner: str | int | None = None,
        group: str | int | None = None,
        recursive: bool = False,
    ) -> EntryInfo:
        """Change the owner and/or group (names or ids) of ``path``, or of
        everything under it with ``recursive``; symlinks themselves, not followed."""
        body = {"path": path, "owner": owner, "group": group, "recursive": recursive}
        data = await self._connection.request_json("POST", f"{self._path}/chown", json=body)
        return EntryInfo.from_dict(data)

    async def find(self, path: str, pattern: str, limit: int = 1000) -> builtins.list[EntryInfo]:
        """Entries under ``path`` matching the glob ``pattern`` (relative to it;
        ``**`` spans directories), sorted by path. More than ``limit`` matches
        raises ``PayloadTooLarge`` rather than returning a cut list."""
        data = await self._connection.request_json(
            "GET",
            f"{self._path}/find",
            params={"path": path, "pattern": pattern, "limit": limit},
        )
        return [EntryInfo.from_dict(entry) for entry in data["entries"]]

    async def watch_dir(
        self,
        path: str,
        on_event: EventHandler | None = None,
        recursive: bool = False,
        on_exit: ExitHandler | None = None,
    ) -> AsyncWatchHandle:
        """Watch the directory ``path`` (and, with ``recursive``, every directory
        below it, also ones created later). Each event goes to ``on_event`` as it
        happens, or waits for ``get_new_events()`` without one. A missing path
        raises ``FileNotFound`` here. ``stop()`` ends the watch."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        return await AsyncWatchHandle.open(
            self._connection, f"{self._path}/watch", params, on_event, on_exit
        )


class WriteEntry(TypedDict, total=False):
    path: Required[str]
    data: Required[str | bytes | Readable]
    mode: int


def _batch(files: Iterable[WriteEntry]) -> Iterator[tuple[str, object, int, int | None]]:
    for item in files:
        data = item["data"]
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
            yield item["path"], raw, len(raw), item.get("mode")
            continue
        seek = getattr(data, "seek", None)
        tell = getattr(data, "tell", None)
        if seek is None or tell is None:
            raise TypeError(f"data for {item['path']!r} must be text, bytes or a seekable file")
        start = tell()
        size = seek(0, os.SEEK_END) - start
        seek(start)
        yield item["path"], data, size, item.get("mode")
