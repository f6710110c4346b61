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
    CHUNK,
    DATA,
    END,
    HEADER,
    JSON,
    MAX_FRAME,
    STDERR,
    STDOUT,
    FrameError,
    decode_json,
    encode,
    encode_json,
)
from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    FileEntry,
    JobInfo,
    JobSpec,
    OutputEvent,
    OutputKind,
)

#: sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
#: How long past its own timeout an exec may take before the client gives up on
#: the agent: killing, draining and answering take a moment, a stuck agent forever.
EXEC_MARGIN = 15.0
#: Pause between connection attempts while waiting for a fresh agent.
READY_POLL = 0.0015
#: Bytes asked for per read; above CHUNK so a whole data frame fits in one.
STREAM_LIMIT = 1024 * 1024


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
        await self._fill(end)
        payload = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return kind, payload

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


class AgentClient:
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

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        async with self._open({"op": "read", "path": path}) as link:
            # The header decides before the first chunk: a missing file raises here.
            self._checked(await link.json())
            while True:
                kind, payload = await link.frame()
                if kind == END:
                    return
                if kind != DATA:
                    raise FrameError(f"unexpected {kind!r} frame in a file stream")
                yield payload

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        mode: int | None = None,
    ) -> FileEntry:
        request = {"op": "write", "path": path, "user": user, "mode": mode}
        async with self._open(request) as link:
            # The agent may refuse before the stream ends (a directory, a full
            # disk): its answer is read concurrently, and sending stops once it comes.
            answer = asyncio.ensure_future(link.json())
            try:
                async for chunk in chunks:
                    if answer.done():
                        break
                    for start in range(0, len(chunk), CHUNK):
                        await link.send(encode(DATA, chunk[start : start + CHUNK]))
                else:
                    if not answer.done():
                        await link.send(encode(END))
            except BaseException:
                # The data source failed (the uploader went away): closing
                # without Z makes the agent discard everything it received.
                answer.cancel()
                with contextlib.suppress(BaseException):
                    await answer
                raise
            header = self._checked(await answer)
        return _entry(header["entry"])

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
        request = {
            "op": "start",
            "cmd": list(spec.cmd),
            "env": dict(spec.env),
            "cwd": spec.cwd,
            "user": spec.user,
            "tag": spec.tag,
            "timeout": spec.timeout or None,
            "stdin": spec.stdin,
            "stdin_b64": None
            if spec.stdin_data is None
            else base64.b64encode(spec.stdin_data).decode(),
            "max_output": spec.max_output,
        }
        return _job((await self._call(request))["job"])

    async def jobs(self) -> list[JobInfo]:
        return [_job(raw) for raw in (await self._call({"op": "jobs"}))["jobs"]]

    async def attach(
        self, pid: int, offset: int = 0, follow: bool = True
    ) -> AsyncIterator[OutputEvent]:
        request = {"op": "attach", "pid": pid, "offset": offset, "follow": follow}
        async with self._open(request) as link:
            self._checked(await link.json())
            at = offset
            while True:
                kind, payload = await link.frame()
                if kind in (STDOUT, STDERR):
                    stream: OutputKind = "stdout" if kind == STDOUT else "stderr"
                    yield OutputEvent(kind=stream, data=payload, offset=at)
                    at += len(payload)
                    continue
                if kind != JSON:
                    raise FrameError(f"unexpected {kind!r} frame during attach")
                try:
                    event = decode_json(payload)
                except ValueError as exc:
                    raise FrameError(f"malformed event frame: {exc}") from exc
                what = event.pop("event", None)
                if what == "truncated":
                    yield OutputEvent(kind="truncated", offset=at, stream=event.get("stream"))
                elif what == "exit":
                    yield OutputEvent(kind="exit", offset=at, info=_job(event))
                    return
                elif what == "more":
                    return
                else:
                    raise FrameError(f"unexpected event {what!r} during attach")

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


def _job(raw: dict[str, Any]) -> JobInfo:
    try:
        return JobInfo(
            pid=int(raw["pid"]),
            tag=raw.get("tag"),
            cmd=list(raw["cmd"]),
            cwd=str(raw["cwd"]),
            env_keys=list(raw.get("env_keys") or []),
            user=str(raw["user"]),
            started_at=float(raw["started_at"]),
            running=bool(raw["running"]),
            ended_at=None if raw.get("ended_at") is None else float(raw["ended_at"]),
            exit_code=raw.get("exit_code"),
            signal=raw.get("signal"),
            timed_out=bool(raw.get("timed_out")),
            stdin=str(raw.get("stdin") or "none"),
            output_bytes=int(raw.get("output_bytes") or 0),
            truncated=list(raw.get("truncated") or []),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SandbankError(f"the agent sent a malformed process record: {raw!r}") from exc


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
