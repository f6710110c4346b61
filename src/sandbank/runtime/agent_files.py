"""``AgentClient``'s file-tree operations (``FileTreeChannel``): tar streams
both ways, batches, chmod/chown, find and watches, over the agent's wire format.

A mixin so that ``agent_client`` stays about connections and processes; it
uses that module's ``_open`` (one connection per operation) and ``_checked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sandbank.protocol.agent import (
    DATA,
    END,
    FILE_CHUNK,
    HEADER,
    JSON,
    FrameError,
    decode_json,
    encode,
)
from sandbank.runtime.base import FileEntry
from sandbank.runtime.filetree import WatchEvent

if TYPE_CHECKING:
    from pathlib import Path

    from sandbank.runtime.agent_client import _Link


#: Send buffer of an upload's connection to the agent (the kernel caps it at wmem_max).
UPLOAD_SNDBUF = 4 * 1024 * 1024


async def _send_frame(sock: socket.socket, parts: list[memoryview], size: int) -> None:
    """One D frame of ``parts`` (``size`` bytes in all), with sendmsg(2): the
    pieces go out from where they are, not joined into a copy first."""
    loop = asyncio.get_running_loop()
    views = [memoryview(HEADER.pack(DATA, size)), *parts]
    while views:
        try:
            sent = sock.sendmsg(views)
        except BlockingIOError:
            sent = 0
        if not sent:
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())
            continue
        while sent and sent >= len(views[0]):
            sent -= len(views[0])
            del views[0]
        if sent:
            views[0] = views[0][sent:]


def _entry(raw: dict[str, Any]) -> FileEntry:
    from sandbank.runtime.agent_client import _entry as parse  # the module that mixes this in

    return parse(raw)


class AgentFileTree:
    socket_path: Path

    if TYPE_CHECKING:

        def _open(
            self, request: dict[str, Any]
        ) -> contextlib.AbstractAsyncContextManager[_Link]: ...

        @staticmethod
        def _checked(header: dict[str, Any]) -> dict[str, Any]: ...

        async def _call(self, request: dict[str, Any]) -> dict[str, Any]: ...

    async def _upload(
        self, request: dict[str, Any], chunks: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        """Send ``request`` and ``chunks`` as D frames + Z; the checked answer.

        The agent may refuse before the stream ends (a directory in the way, a
        full disk, a bad archive): its answer is read concurrently, and sending
        stops once it comes. A failing data source (the uploader went away)
        closes the connection without Z, and the agent discards everything.
        """
        async with self._open(request) as link:
            # Room for whole frames in the socket: the agent takes them in as
            # they come, instead of the loop waking for every 200 KiB it drains.
            link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UPLOAD_SNDBUF)
            answer = asyncio.ensure_future(link.json())
            # The pieces (an HTTP body comes in whatever sizes the network gives)
            # are gathered into frames of FILE_CHUNK, sent as they are (no copy):
            # per frame the agent pays a few system calls and a trip through its loop.
            parts: list[memoryview] = []
            size = 0
            try:
                async for chunk in chunks:
                    if answer.done():
                        break
                    view = memoryview(chunk)
                    while view:
                        piece = view[: FILE_CHUNK - size]
                        parts.append(piece)
                        size += len(piece)
                        view = view[len(piece) :]
                        if size == FILE_CHUNK:
                            await _send_frame(link.sock, parts, size)
                            parts, size = [], 0
                else:
                    if not answer.done():
                        if size:
                            await _send_frame(link.sock, parts, size)
                        await link.send(encode(END))
            except BaseException:
                answer.cancel()
                with contextlib.suppress(BaseException):
                    await answer
                raise
            return self._checked(await answer)

    async def _download(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._open(request) as link:
            self._checked(await link.json())  # errors raise before the first chunk
            while True:
                kind, payload = await link.frame()
                if kind == END:
                    return
                if kind != DATA:
                    raise FrameError(f"unexpected {kind!r} frame in a data stream")
                yield payload

    def read_text(self, path: str, encoding: str) -> AsyncIterator[bytes]:
        return self._download({"op": "read", "path": path, "encoding": encoding})

    def read_tar(self, path: str) -> AsyncIterator[bytes]:
        return self._download({"op": "tar", "path": path})

    async def write_tar(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        overwrite: bool = False,
    ) -> FileEntry:
        request = {"op": "untar", "path": path, "user": user, "overwrite": overwrite}
        return _entry((await self._upload(request, chunks))["entry"])

    async def write_files(
        self, chunks: AsyncIterator[bytes], *, user: str = "user"
    ) -> list[FileEntry]:
        header = await self._upload({"op": "write_files", "user": user}, chunks)
        return [_entry(raw) for raw in header["entries"]]

    async def chmod(self, path: str, mode: int, *, user: str = "user") -> FileEntry:
        header = await self._call({"op": "chmod", "path": path, "mode": mode, "user": user})
        return _entry(header["entry"])

    async def chown(
        self,
        path: str,
        owner: str | int | None,
        group: str | int | None,
        *,
        recursive: bool = False,
        user: str = "user",
    ) -> FileEntry:
        request = {
            "op": "chown",
            "path": path,
            "owner": owner,
            "group": group,
            "recursive": recursive,
            "user": user,
        }
        return _entry((await self._call(request))["entry"])

    async def find(
        self, path: str, pattern: str, *, limit: int, user: str = "user"
    ) -> list[FileEntry]:
        request = {"op": "find", "path": path, "pattern": pattern, "limit": limit, "user": user}
        return [_entry(raw) for raw in (await self._call(request))["entries"]]

    async def watch(
        self, path: str, *, recursive: bool = False, user: str = "user"
    ) -> AsyncIterator[WatchEvent]:
        request = {"op": "watch", "path": path, "recursive": recursive, "user": user}
        async with self._open(request) as link:
            header = self._checked(await link.json())
            yield WatchEvent(kind="start", name=str(header.get("path", path)))
            while True:
                kind, payload = await link.frame()
                if kind != JSON:
                    raise FrameError(f"unexpected {kind!r} frame during a watch")
                try:
                    raw = decode_json(payload)
                except ValueError as exc:
                    raise FrameError(f"malformed watch event: {exc}") from exc
                event = WatchEvent(
                    kind=str(raw.get("event")),
                    type=raw.get("type"),
                    name=raw.get("name"),
                    is_dir=bool(raw.get("is_dir")),
                    reason=raw.get("reason"),
                )
                yield event
                if event.kind == "end":
                    return
