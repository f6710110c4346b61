"""The server's end of ``sandbank.protocol.agent``: a ``SandboxChannel`` over the
agent's unix socket.

Every operation opens its own connection and closes it when done. Nothing
outlives an operation, so the agent can be checkpointed, restored or restarted
between two calls, and the server can restart without telling it.

Connections are plain non-blocking sockets driven by the event loop's socket
calls, with a read-ahead buffer of their own: asyncio's streams would cost each
operation a transport, a protocol and a closing handshake (~0.1 ms of a 1 ms
exec).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sandbank.errors import SandbankError, SandboxUnavailable, Timeout, from_code
from sandbank.protocol.agent import (
    HEADER,
    JSON,
    MAX_FRAME,
    STDERR,
    STDOUT,
    FrameError,
    decode_json,
    encode_json,
)
from sandbank.runtime.agent_files import AgentFileTree
from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    FileEntry,
    JobInfo,
    JobSpec,
    OutputEvent,
)
from sandbank.runtime.job_events import job_info as _job
from sandbank.runtime.job_events import output_events, start_request

#: sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
#: How long past its own timeout an exec may take before the client gives up on
#: the agent: killing, draining and answering take a moment, a stuck agent forever.
EXEC_MARGIN = 15.0
#: Pause between connection attempts while waiting for a fresh agent.
READY_POLL = 0.0015
#: Bytes asked for per read; above CHUNK so a whole data frame fits in one.
STREAM_LIMIT = 1024 * 1024
#: Payloads from this size on skip the read-ahead buffer.
BIG_FRAME = 64 * 1024


class _Link:
    """One connection to the agent: a non-blocking socket and what was read ahead."""

    __slots__ = ("_buf", "_loop", "sock")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self._loop = loop
        self._buf = bytearray()

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    async def frame(self) -> tuple[bytes, bytes]:
        await self._fill(HEADER.size)
        kind, length = HEADER.unpack_from(self._buf)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes is too large")
        end = HEADER.size + length
        if len(self._buf) < end and length >= BIG_FRAME:
            return kind, await self._big(length)
        await self._fill(end)
        return kind, self._take(end)

    def buffered(self, kind: bytes) -> bytes | None:
        """The payload of the next frame if it is a ``kind`` frame already read
        whole: what ``frame`` would return at once, without waiting."""
        if len(self._buf) >= HEADER.size and self._buf[:1] == kind:
            end = HEADER.size + HEADER.unpack_from(self._buf)[1]
            if len(self._buf) >= end:
                return self._take(end)
        return None

    def _take(self, end: int) -> bytes:
        with memoryview(self._buf) as view:  # one copy, and released before the del
            payload = bytes(view[HEADER.size : end])
        del self._buf[:end]
        return payload

    async def _big(self, length: int) -> bytes:
        """A large payload read straight into a buffer of its size (file data):
        a copy or two fewer per byte than going through the read-ahead buffer."""
        payload = bytearray(length)
        have = len(self._buf) - HEADER.size
        payload[:have] = memoryview(self._buf)[HEADER.size :]
        self._buf.clear()
        view = memoryview(payload)
        while have < length:
            count = await self._loop.sock_recv_into(self.sock, view[have:])
            if not count:
                raise FrameError("agent closed the connection mid-frame")
            have += count
        return bytes(payload)

    async def json(self) -> dict[str, Any]:
        kind, payload = await self.frame()
        if kind != JSON:
            raise FrameError(f"expected a JSON frame, got {kind!r}")
        try:
            return decode_json(payload)
        except ValueError as exc:
            raise FrameError(f"the agent sent malformed JSON: {exc}") from exc

    async def _fill(self, size: int) -> None:
        while len(self._buf) < size:
            data = await self._loop.sock_recv(self.sock, STREAM_LIMIT)
            if not data:
                raise FrameError(
                    "agent closed the connection mid-frame" if self._buf else "connection closed"
                )
            self._buf += data


class AgentClient(AgentFileTree):
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def __repr__(self) -> str:
        return f"AgentClient({str(self.socket_path)!r})"

    # -- connections ---------------------------------------------------------------

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if len(os.fsencode(self.socket_path)) <= MAX_UNIX_PATH:
                await loop.sock_connect(sock, str(self.socket_path))
            else:
                # Too long for sun_path: go through a descriptor of the directory,
                # which the kernel resolves back to the same place.
                flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
                dirfd = os.open(self.socket_path.parent, flags)
                try:
                    short = f"/proc/self/fd/{dirfd}/{self.socket_path.name}"
                    await loop.sock_connect(sock, short)
                finally:
                    os.close(dirfd)
        except OSError as exc:
            sock.close()
            raise SandboxUnavailable(
                f"the agent at {self.socket_path} is not answering: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        return _Link(sock, loop)

    @contextlib.asynccontextmanager
    async def _open(self, request: dict[str, Any]) -> AsyncIterator[_Link]:
        """A connection with ``request`` sent; broken connections become
        ``SandboxUnavailable``, and the connection is always closed."""
        link = await self._connect()
        try:
            await link.send(encode_json(request))
            yield link
        except (FrameError, ConnectionError) as exc:
            raise SandboxUnavailable(f"lost the agent at {self.socket_path}: {exc}") from exc
        finally:
            link.sock.close()

    @staticmethod
    def _checked(header: dict[str, Any]) -> dict[str, Any]:
        if header.get("ok") is True:
            return header
        code = str(header.get("code", "internal_error"))
        message = str(header.get("message", "the agent reported an error"))
        details = {k: v for k, v in header.items() if k not in ("ok", "code", "message")}
        raise from_code(code, message, **details)

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._open(request) as link:
            return self._checked(await link.json())

    # -- readiness -----------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"})

    async def park(self) -> dict[str, Any]:
        """Before a checkpoint: the agent lets go of its listening socket (agent/parking.py)."""
        return await self._call({"op": "park"})

    async def set_hostname(self, name: str) -> None:
        """Put the sandbox's name in its /etc/hostname and /etc/hosts (not the kernel's)."""
        await self._call({"op": "hostname", "name": name})

    async def wait_ready(self, timeout: float) -> None:
        """Return once the agent answers a ping; ``SandboxUnavailable`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Exception | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self.ping()
                return
            except (SandboxUnavailable, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(READY_POLL)
        raise SandboxUnavailable(
            f"the agent at {self.socket_path} did not answer within {timeout:g}s"
            + (f" ({last})" if last else "")
        )

    # -- SandboxChannel ------------------------------------------------------------

    async def exec(self, spec: ExecSpec) -> ExecResult:
        request = {
            "op": "exec",
            "cmd": list(spec.cmd),
            "env": dict(spec.env),
            "cwd": spec.cwd,
            "user": spec.user,
            "timeout": spec.timeout,
            "stdin_b64": None if spec.stdin is None else base64.b64encode(spec.stdin).decode(),
        }
        limit = None if spec.timeout is None else spec.timeout + EXEC_MARGIN
        stdout, stderr = bytearray(), bytearray()
        truncated = False
        try:
            async with asyncio.timeout(limit), self._open(request) as link:
                header = self._checked(await link.json())
                while True:
                    kind, payload = await link.frame()
                    if kind in (STDOUT, STDERR):
                        # Keep the head of each stream up to the cap and keep
                        # draining, so a chatty command cannot exhaust our memory.
                        buf = stdout if kind == STDOUT else stderr
                        room = spec.max_output - len(buf)
                        if len(payload) > room:
                            truncated = True
                        if room > 0:
                            buf += payload[:room]
                    elif kind == JSON:
                        try:
                            done = decode_json(payload)
                        except ValueError as exc:
                            raise FrameError(f"malformed exit frame: {exc}") from exc
                        break
                    else:
                        raise FrameError(f"unexpected {kind!r} frame during exec")
        except TimeoutError as exc:
            if limit is None:
                raise
            # Closing the connection made the agent kill the command's process group.
            raise Timeout(f"the agent did not finish {spec.cmd[0]!r} within {limit:g}s") from exc
        return ExecResult(
            exit_code=int(done["exit_code"]),
            stdout=bytes(stdout),
            stderr=bytes(stderr),
            duration_ms=float(done["duration_ms"]),
            timed_out=bool(done["timed_out"]),
            pid=header.get("pid"),
            truncated=truncated,
        )

    def read_file(self, path: str) -> AsyncIterator[bytes]:
        return self._download({"op": "read", "path": path})

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        mode: int | None = None,
    ) -> FileEntry:
        request = {"op": "write", "path": path, "user": user, "mode": mode}
        return _entry((await self._upload(request, chunks))["entry"])

    async def list_dir(self, path: str, depth: int = 1) -> list[FileEntry]:
        header = await self._call({"op": "list", "path": path, "depth": depth})
        return [_entry(item) for item in header["entries"]]

    async def stat(self, path: str) -> FileEntry:
        return _entry((await self._call({"op": "stat", "path": path}))["entry"])

    async def move(self, src: str, dst: str, *, user: str = "user") -> FileEntry:
        header = await self._call({"op": "move", "src": src, "dst": dst, "user": user})
        return _entry(header["entry"])

    async def make_dir(self, path: str, *, user: str = "user") -> tuple[bool, FileEntry]:
        header = await self._call({"op": "mkdir", "path": path, "user": user})
        return bool(header["created"]), _entry(header["entry"])

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call({"op": "remove", "path": path, "recursive": recursive})

    # -- background processes ------------------------------------------------------

    async def start(self, spec: JobSpec) -> JobInfo:
        return _job((await self._call(start_request(spec)))["job"])

    async def run(self, spec: JobSpec) -> AsyncIterator[OutputEvent]:
        # The agent kills the process if this connection closes before the exit.
        async with self._open(start_request(spec, foreground=True)) as link:
            yield OutputEvent(kind="start", info=_job(self._checked(await link.json())["job"]))
            async for event in output_events(link, 0):
                yield event

    async def jobs(self) -> list[JobInfo]:
        return [_job(raw) for raw in (await self._call({"op": "jobs"}))["jobs"]]

    async def attach(
        self, pid: int, offset: int = 0, follow: bool = True
    ) -> AsyncIterator[OutputEvent]:
        request = {"op": "attach", "pid": pid, "offset": offset, "follow": follow}
        async with self._open(request) as link:
            self._checked(await link.json())
            async for event in output_events(link, offset):
                yield event

    async def wait(self, pid: int, timeout: float | None = None) -> JobInfo:
        limit = None if not timeout else timeout + EXEC_MARGIN
        try:
            async with asyncio.timeout(limit):
                header = await self._call({"op": "wait", "pid": pid, "timeout": timeout or None})
        except TimeoutError as exc:
            raise Timeout(f"the agent did not answer a wait for {pid} within {limit}s") from exc
        return _job(header["job"])

    async def send_stdin(self, pid: int, data: bytes, close: bool = False) -> None:
        request = {
            "op": "stdin",
            "pid": pid,
            "data_b64": base64.b64encode(data).decode(),
            "close": close,
        }
        await self._call(request)

    async def signal(self, pid: int, sig: int | str) -> None:
        await self._call({"op": "signal", "pid": pid, "signal": sig})

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        await self._call({"op": "resize", "pid": pid, "cols": cols, "rows": rows})


def _entry(raw: dict[str, Any]) -> FileEntry:
    try:
        return FileEntry(
            name=raw["name"],
            path=raw["path"],
            type=raw["type"],
            size=int(raw["size"]),
            mode=int(raw["mode"]),
            permissions=raw["permissions"],
            owner=raw["owner"],
            group=raw["group"],
            modified_at=float(raw["modified_at"]),
            symlink_target=raw.get("symlink_target"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SandbankError(f"the agent sent a malformed file entry: {raw!r}") from exc


__all__ = ["AgentClient"]
