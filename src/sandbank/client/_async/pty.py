"""Terminals in a sandbox: ``sandbox.pty.create/connect/send_input/resize/kill``.

A terminal lives in the sandbox's agent, not in this client: it outlives the
handle, the connection and the server. ``connect(pid)`` picks one up again
with its recent output replayed. A handle talks over one WebSocket (binary
frames are terminal bytes; see ``sandbank.protocol.pty_ws``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from sandbank import errors
from sandbank.protocol import pty_ws

from .._config import error_from_response, tls_context
from ..pty_types import PtyInfo, PtyResult, PtySize
from ._http import AsyncApiConnection

#: A callback for a chunk of terminal output.
DataHandler = Callable[[bytes], object]
#: Seconds to wait for the WebSocket's opening handshake.
OPEN_TIMEOUT = 30.0


class AsyncPtyHandle:
    """One connection to a terminal. Output arrives through ``on_data``, by
    iterating the handle (bytes), or both; ``wait`` reads until the exit.
    ``disconnect`` (or leaving ``async with``) leaves the terminal running."""

    def __init__(
        self, ptys: AsyncPty, pid: int, socket: ClientConnection, on_data: DataHandler | None
    ) -> None:
        self._ptys = ptys
        self._socket = socket
        self._on_data = on_data
        self.pid = pid
        #: Where the replay started (bytes of the terminal's output).
        self.offset = 0
        #: Bytes of output seen so far; ``connect(pid, offset=...)`` resumes there.
        self.position = 0
        self.result: PtyResult | None = None

    def __repr__(self) -> str:
        return f"<PtyHandle pid={self.pid}>"

    @property
    def exit_code(self) -> int | None:
        return None if self.result is None else self.result.exit_code

    async def _ready(self) -> None:
        event = pty_ws.parse_event(str(await self._socket.recv()))
        if event["type"] == "error":
            raise _error(event)
        self.offset = self.position = int(event.get("offset") or 0)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The terminal's output as it comes, until it exits (or the handle is closed)."""
        while self.result is None:
            try:
                message = await self._socket.recv()
            except ConnectionClosed:
                return
            if isinstance(message, bytes):
                self.position += len(message)
                if self._on_data is not None:
                    self._on_data(message)
                yield message
                continue
            event = pty_ws.parse_event(message)
            if event["type"] == "truncated":
                self.position = int(event["offset"])
            elif event["type"] == "exit":
                code = event.get("exit_code")
                self.result = PtyResult(
                    exit_code=-1 if code is None else int(code),
                    signal=event.get("signal"),
                    timed_out=bool(event.get("timed_out")),
                )
            elif event["type"] == "error":
                raise _error(event)

    async def wait(self) -> PtyResult:
        """Read (and hand to ``on_data``) all output until the process exits."""
        async for _ in self:
            pass
        if self.result is None:
            raise errors.SandboxUnavailable(
                f"the connection to terminal {self.pid} closed before it exited; "
                "connect again to go on"
            )
        return self.result

    async def send_input(self, data: str | bytes) -> None:
        await self._socket.send(data.encode() if isinstance(data, str) else data)

    async def resize(self, size: PtySize) -> None:
        _check_size(size)
        await self._socket.send(pty_ws.resize(size.cols, size.rows))

    async def kill(self) -> bool:
        return await self._ptys.kill(self.pid)

    async def disconnect(self) -> None:
        """Close this connection; the terminal keeps running."""
        await self._socket.close()

    async def __aenter__(self) -> AsyncPtyHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


class AsyncPty:
    """``sandbox.pty``: the sandbox's terminals."""

    def __init__(self, connection: AsyncApiConnection, sandbox_path: str) -> None:
        self._connection = connection
        self._path = f"{sandbox_path}/pty"

    async def create(
        self,
        size: PtySize | None = None,
        *,
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        user: str = "user",
        on_data: DataHandler | None = None,
        timeout: float | None = None,
        cmd: Sequence[str] | None = None,
        tag: str | None = None,
    ) -> AsyncPtyHandle:
        """Start a terminal running the user's login shell (or ``cmd``) and
        connect to it. ``timeout`` (seconds) kills it then; none by default."""
        size = size or PtySize()
        body: dict[str, Any] = {"cols": size.cols, "rows": size.rows, "user": user}
        optional: dict[str, Any] = {
            "cwd": cwd,
            "env": dict(envs) if envs is not None else None,
            "timeout": timeout or None,
            "cmd": list(cmd) if cmd is not None else None,
            "tag": tag,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        info = PtyInfo.from_dict(await self._connection.request_json("POST", self._path, json=body))
        return await self.connect(info.pid, on_data=on_data)

    async def connect(
        self, pid: int, *, on_data: DataHandler | None = None, offset: int = 0
    ) -> AsyncPtyHandle:
        """A new connection to terminal ``pid``: the output it still holds from
        ``offset`` (its last 512 KiB at most) first, then live output."""
        config = self._connection.config
        base = config.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url = f"{base}{self._path}/{pid}/ws?{urlencode({'offset': offset})}"
        try:
            # Entered as a context manager (the blocking twin's client wants
            # that); the handle closes it.
            socket = await connect(
                url,
                additional_headers=config.headers(),
                ssl=tls_context() if url.startswith("wss://") else None,
                open_timeout=OPEN_TIMEOUT,
                max_size=None,
            ).__aenter__()
        except InvalidStatus as exc:
            response = exc.response
            raise error_from_response(
                response.status_code, bytes(response.body or b""), response.reason_phrase
            ) from None
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise errors.SandboxUnavailable(
                f"cannot open terminal {pid} at {url}: {exc or type(exc).__name__}"
            ) from exc
        handle = AsyncPtyHandle(self, pid, socket, on_data)
        try:
            await handle._ready()
        except BaseException:
            await socket.close()
            raise
        return handle

    async def list(self) -> list[PtyInfo]:
        data = await self._connection.request_json("GET", self._path)
        return [PtyInfo.from_dict(item) for item in data["ptys"]]

    async def get(self, pid: int) -> PtyInfo:
        return PtyInfo.from_dict(await self._connection.request_json("GET", f"{self._path}/{pid}"))

    async def send_input(self, pid: int, data: str | bytes) -> None:
        content = data.encode() if isinstance(data, str) else data
        await self._connection.request("POST", f"{self._path}/{pid}/input", content=content)

    async def resize(self, pid: int, size: PtySize) -> None:
        body = {"cols": size.cols, "rows": size.rows}
        await self._connection.request("POST", f"{self._path}/{pid}/resize", json=body)

    async def kill(self, pid: int) -> bool:
        """SIGKILL the terminal's whole session; False if it had ended or is unknown."""
        try:
            await self._connection.request("DELETE", f"{self._path}/{pid}")
        except (errors.NotFound, errors.Conflict):
            return False
        return True


def _check_size(size: PtySize) -> None:
    for name, value in (("cols", size.cols), ("rows", size.rows)):
        if not 1 <= value <= pty_ws.MAX_SIZE:
            raise errors.ValidationFailed(
                f"{name} must be between 1 and {pty_ws.MAX_SIZE}, got {value}", field=name
            )


def _error(event: Mapping[str, Any]) -> errors.SandbankError:
    details = {k: v for k, v in event.items() if k not in ("type", "code", "message")}
    return errors.from_code(str(event.get("code")), str(event.get("message")), **details)
