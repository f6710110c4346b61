"""Background processes: ``CommandHandle`` and the NDJSON output streams.

Output events are the server's lines: ``start`` (pid), ``stdout``/``stderr``
(``data`` text; ``data_b64`` the exact bytes when the text differs),
``truncated`` and a final ``exit``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from sandbank import errors

from .._config import REQUEST_TIMEOUT
from ..exceptions import CommandExitError
from ..models import CommandResult, ProcessInfo
from ._http import AsyncApiConnection, QueryParams, TimeoutSeconds

#: A callback for a chunk of output text.
OutputHandler = Callable[[str], object]


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
    """The events of an NDJSON answer, one at a time as they arrive. Closing
    the iterator closes the connection (which ends a foreground command)."""
    chunks = connection.stream(method, path, params=params, json=body, timeout=timeout)
    pending = bytearray()
    try:
        async for chunk in chunks:
            # Only the new bytes can end a line: a long line is scanned once.
            end = chunk.find(b"\n")
            if end < 0:
                pending += chunk
                continue
            pending += chunk
            end += len(pending) - len(chunk)
            start = 0
            while end >= 0:
                if end > start:
                    event: dict[str, Any] = json.loads(pending[start:end])
                    yield event
                start = end + 1
                end = pending.find(b"\n", start)
            del pending[:start]
    finally:
        await chunks.aclose()


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

    def __init__(
        self,
        connection: AsyncApiConnection,
        processes_path: str,
        pid: int,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> None:
        self._connection = connection
        self._path = f"{processes_path}/{pid}"
        self.pid = pid
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr

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
        (seconds) raises ``Timeout`` if it is still running then. The handlers
        default to those given to ``run``."""
        on_stdout = on_stdout or self._on_stdout
        on_stderr = on_stderr or self._on_stderr
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
