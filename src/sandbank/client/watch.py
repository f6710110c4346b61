"""Directory watches: ``files.watch_dir`` returns one of these handles.

Written by hand for both flavours (not generated): stopping a watch differs.
The asyncio handle reads its NDJSON stream on a task and cancels it; the
blocking one reads on a thread and, to stop, shuts the connection's socket
down, which wakes the read at once.

With ``on_event`` every event is handed to it as it arrives; without, events
queue up until ``get_new_events()`` takes them (E2B's polling style).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from sandbank import errors

from ._config import CONNECT_TIMEOUT, error_from_response

if TYPE_CHECKING:
    from ._async._http import AsyncApiConnection
    from ._sync._http import ApiConnection


@dataclass(frozen=True)
class FilesystemEvent:
    """``type`` is ``create``, ``write``, ``remove``, ``rename`` or ``chmod``;
    ``name`` is relative to the watched directory."""

    name: str
    type: str
    is_dir: bool = False


EventHandler = Callable[[FilesystemEvent], object]
#: Called once when the watch ends by itself: None when the directory went
#: away, the error when the sandbox or the connection did. Not called on ``stop``.
ExitHandler = Callable[[Exception | None], object]


def _request(
    client: httpx.Client | httpx.AsyncClient, path: str, params: dict[str, Any]
) -> httpx.Request:
    # No read timeout: a quiet directory is not a dead one (keepalives come every 15 s).
    return client.build_request(
        "GET", path, params=params, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT)
    )


def _parse(line: str) -> FilesystemEvent | Exception | None:
    """An event, the error that ended the stream, or None for other lines."""
    if not line.strip():
        return None
    data = json.loads(line)
    kind = data.get("event")
    if kind == "fs":
        return FilesystemEvent(str(data["name"]), str(data["type"]), bool(data.get("is_dir")))
    if kind == "error":
        return errors.from_code(str(data.get("code")), str(data.get("message")))
    if kind == "overflow":
        return None  # the kernel dropped events; nothing to deliver
    return None


class _Events:
    """What both handles share: the queue or the callback, and the exit."""

    def __init__(self, path: str, on_event: EventHandler | None, on_exit: ExitHandler | None):
        self.path = path
        self._on_event = on_event
        self._on_exit = on_exit
        self._queue: list[FilesystemEvent] = []
        self._lock = threading.Lock()
        self.stopped = False

    def get_new_events(self) -> list[FilesystemEvent]:
        """Events since the last call (only without ``on_event``)."""
        with self._lock:
            events, self._queue = self._queue, []
        return events

    def _deliver(self, event: FilesystemEvent) -> object:
        if self._on_event is not None:
            return self._on_event(event)
        with self._lock:
            self._queue.append(event)
        return None


class AsyncWatchHandle(_Events):
    @classmethod
    async def open(
        cls,
        connection: AsyncApiConnection,
        url: str,
        params: dict[str, Any],
        on_event: EventHandler | None,
        on_exit: ExitHandler | None,
    ) -> AsyncWatchHandle:
        client = connection._client
        try:
            response = await client.send(_request(client, url, params), stream=True)
        except httpx.TransportError as exc:
            raise connection._transport_error(exc, None) from exc
        try:
            if not response.is_success:
                await response.aread()
                raise error_from_response(
                    response.status_code, response.content, response.reason_phrase
                )
            lines = response.aiter_lines()
            start = json.loads(await anext(lines))
        except BaseException:
            await response.aclose()
            raise
        handle = cls(str(start.get("path", "")), on_event, on_exit)
        handle._task = asyncio.ensure_future(handle._run(response, lines))
        return handle

    _task: asyncio.Future[None]

    async def _run(self, response: httpx.Response, lines: AsyncIterator[str]) -> None:
        ended: Exception | None = None
        try:
            async for line in lines:
                got = _parse(line)
                if isinstance(got, FilesystemEvent):
                    result = self._deliver(got)
                    if inspect.isawaitable(result):
                        await result
                elif isinstance(got, Exception):
                    ended = got
                    break
        except httpx.TransportError as exc:
            ended = errors.SandbankError(f"the watch of {self.path} was cut: {exc}")
        finally:
            await response.aclose()
        if self._on_exit is not None:
            result = self._on_exit(ended)
            if inspect.isawaitable(result):
                await result

    async def stop(self) -> None:
        """Stop watching; the sandbox drops the watch at once."""
        self.stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class WatchHandle(_Events):
    @classmethod
    def open(
        cls,
        connection: ApiConnection,
        url: str,
        params: dict[str, Any],
        on_event: EventHandler | None,
        on_exit: ExitHandler | None,
    ) -> WatchHandle:
        client = connection._client
        try:
            response = client.send(_request(client, url, params), stream=True)
        except httpx.TransportError as exc:
            raise connection._transport_error(exc, None) from exc
        try:
            if not response.is_success:
                response.read()
                raise error_from_response(
                    response.status_code, response.content, response.reason_phrase
                )
            lines = response.iter_lines()
            start = json.loads(next(lines))
        except BaseException:
            response.close()
            raise
        handle = cls(str(start.get("path", "")), on_event, on_exit)
        handle._response = response
        handle._thread = threading.Thread(
            target=handle._run, args=(lines,), name=f"sandbank-watch {handle.path}", daemon=True
        )
        handle._thread.start()
        return handle

    _response: httpx.Response
    _thread: threading.Thread

    def _run(self, lines: Iterator[str]) -> None:
        ended: Exception | None = None
        try:
            for line in lines:
                got = _parse(line)
                if isinstance(got, FilesystemEvent):
                    self._deliver(got)
                elif isinstance(got, Exception):
                    ended = got
                    break
        except (httpx.TransportError, httpx.StreamError) as exc:
            if not self.stopped:
                ended = errors.SandbankError(f"the watch of {self.path} was cut: {exc}")
        finally:
            self._response.close()
        if self._on_exit is not None and not self.stopped:
            self._on_exit(ended)

    def stop(self) -> None:
        """Stop watching; the sandbox drops the watch at once."""
        self.stopped = True
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()
