"""Background processes: ``CommandHandle`` and the NDJSON output streams.

Output events are the server's lines: ``start`` (pid), ``stdout``/``stderr``
(``data`` text; ``data_b64`` the exact bytes when the text differs),
``truncated`` and a final ``exit``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from sandbank import errors

from .._config import CONNECT_TIMEOUT, REQUEST_TIMEOUT, error_from_response
from ..exceptions import CommandExitError
from ..models import CommandResult, _Snapshot
from ._http import AsyncApiConnection, QueryParams, TimeoutSeconds

#: A callback for a chunk of output text.
OutputHandler = Callable[[str], object]


def _when(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class ProcessInfo(_Snapshot):
    """A process started in a sandbox, running or ended."""

    pid: int
    tag: str | None
    cmd: list[str]
    cwd: str
    user: str
    running: bool
    started_at: datetime | None
    ended_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stdin: str = "none"
    output_bytes: int = 0
    env_keys: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(data["pid"]),
            tag=data.get("tag"),
            cmd=list(data.get("cmd") or []),
            cwd=str(data.get("cwd", "")),
            user=str(data.get("user", "")),
            running=bool(data.get("running")),
            started_at=_when(data.get("started_at")),
            ended_at=_when(data.get("ended_at")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            timed_out=bool(data.get("timed_out", False)),
            stdin=str(data.get("stdin") or "none"),
            output_bytes=int(data.get("output_bytes") or 0),
            env_keys=list(data.get("env_keys") or []),
            truncated=list(data.get("truncated") or []),
        )


def event_bytes(event: Mapping[str, Any]) -> bytes:
    """The exact bytes of a ``stdout``/``stderr`` event."""
    if "data_b64" in event:
        return base64.b64decode(event["data_b64"])
    return str(event.get("data", "")).encode()


async def ndjson(
    connection: AsyncApiConnection,
    method: str,
    path: str,
    *,
    params: QueryParams | None = None,
    body: Any = None,
    timeout: TimeoutSeconds = REQUEST_TIMEOUT,
) -> AsyncIterator[dict[str, Any]]:
    """The events of an NDJSON answer, one at a time as they arrive."""
    client = connection._client
    request = client.build_request(
        method,
        path,
        params=params,
        json=body,
        timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise connection._transport_error(exc, timeout) from exc
    try:
        if not response.is_success:
            await response.aread()
            raise error_from_response(
                response.status_code, response.content, response.reason_phrase
            )
        pending = b""
        async for chunk in response.aiter_bytes():
            pending += chunk
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event
    except httpx.TransportError as exc:
        raise connection._transport_error(exc, timeout) from exc
    finally:
        await response.aclose()


async def collect(
    events: AsyncIterator[dict[str, Any]],
    on_stdout: OutputHandler | None = None,
    on_stderr: OutputHandler | None = None,
) -> CommandResult:
    """Gather a stream into a ``CommandResult``, calling the handlers on the way."""
    stdout: list[str] = []
    stderr: list[str] = []
    end: dict[str, Any] | None = None
    async for event in events:
        kind = event.get("type")
        if kind == "stdout":
            stdout.append(event["data"])
            if on_stdout is not None:
                on_stdout(event["data"])
        elif kind == "stderr":
            stderr.append(event["data"])
            if on_stderr is not None:
                on_stderr(event["data"])
        elif kind == "exit":
            end = event
    if end is None:
        raise errors.SandbankError("the output stream ended before the process did")
    code = end.get("exit_code")
    return CommandResult(
        exit_code=-1 if code is None else int(code),
        stdout="".join(stdout),
        stderr="".join(stderr),
        duration_ms=float(end.get("duration_ms", 0)),
        timed_out=bool(end.get("timed_out", False)),
    )


class CommandHandle:
    """A background process: wait for it, feed it, signal it, read its output.

    Iterating the handle yields ``(stdout, stderr)`` pairs (one of them None)
    from the start of its output until it exits.
    """

    def __init__(self, connection: AsyncApiConnection, processes_path: str, pid: int) -> None:
        self._connection = connection
        self._path = f"{processes_path}/{pid}"
        self.pid = pid

    def __repr__(self) -> str:
        return f"<CommandHandle pid={self.pid}>"

    async def info(self) -> ProcessInfo:
        return ProcessInfo.from_dict(await self._connection.request_json("GET", self._path))

    def output(self, offset: int = 0, follow: bool = True) -> AsyncIterator[dict[str, Any]]:
        """The raw output events from ``offset``; with ``follow`` until it exits."""
        params: dict[str, str | int] = {"offset": offset, "follow": "true" if follow else "false"}
        return ndjson(
            self._connection,
            "GET",
            f"{self._path}/output",
            params=params,
            timeout=None if follow else REQUEST_TIMEOUT,
        )

    async def __aiter__(self) -> AsyncIterator[tuple[str | None, str | None]]:
        async for event in self.output():
            if event.get("type") == "stdout":
                yield event["data"], None
            elif event.get("type") == "stderr":
                yield None, event["data"]

    async def wait(
        self,
        timeout: float | None = None,
        *,
        check: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandResult:
        """Block until it exits; its whole output and exit code. ``timeout``
        (seconds) raises ``Timeout`` if it is still running then."""
        if timeout:
            await self._connection.request_json(
                "POST",
                f"{self._path}/wait",
                params={"timeout": timeout},
                timeout=timeout + REQUEST_TIMEOUT,
            )
        result = await collect(self.output(follow=not timeout), on_stdout, on_stderr)
        if check and (result.exit_code != 0 or result.timed_out):
            raise CommandExitError(result)
        return result

    async def send_stdin(self, data: str | bytes) -> None:
        content = data.encode() if isinstance(data, str) else data
        await self._connection.request("POST", f"{self._path}/stdin", content=content)

    async def close_stdin(self) -> None:
        await self._connection.request(
            "POST", f"{self._path}/stdin", params={"close": "true"}, content=b""
        )

    async def signal(self, sig: int | str) -> None:
        """Signal its whole process group: a number or a name (``"TERM"``)."""
        await self._connection.request("POST", f"{self._path}/signal", json={"signal": sig})

    async def kill(self) -> bool:
        """SIGKILL its process group; False if it had already ended or is unknown."""
        try:
            await self._connection.request("DELETE", self._path)
        except (errors.NotFound, errors.Conflict):
            return False
        return True
