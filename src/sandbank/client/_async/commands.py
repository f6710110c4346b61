"""Running commands inside a sandbox: to completion, streamed, or in the background."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from sandbank import errors

from .._config import EXEC_TIMEOUT_MARGIN
from ..exceptions import CommandExitError
from ..models import CommandResult, ProcessInfo
from ._http import AsyncApiConnection
from .process import CommandHandle, OutputHandler, collect, ndjson


def _body(
    cmd: str | Sequence[str],
    envs: Mapping[str, str] | None,
    cwd: str | None,
    user: str,
    timeout: float,
) -> dict[str, Any]:
    body: dict[str, Any] = {"command": cmd} if isinstance(cmd, str) else {"cmd": list(cmd)}
    body["user"] = user
    body["timeout"] = timeout
    if envs:
        body["env"] = dict(envs)
    if cwd is not None:
        body["cwd"] = cwd
    return body


class AsyncCommands:
    def __init__(self, connection: AsyncApiConnection, sandbox_path: str) -> None:
        self._connection = connection
        self._path = f"{sandbox_path}/exec"
        self._processes = f"{sandbox_path}/processes"

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        stdin: str | bool | None = None,
        check: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        stdin: str | bool | None = None,
        check: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        tag: str | None = None,
    ) -> CommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        stdin: str | bool | None = None,
        check: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` and return its exit code and output.

        A string runs through ``sh -c``; a list is an argv run as is.
        ``timeout`` is in seconds, ``0`` or ``None`` for no limit; a command
        that outlives it is killed and comes back with ``timed_out`` set.
        With ``check=True`` a non-zero exit (or a timeout) raises
        ``CommandExitError`` carrying the result.

        ``on_stdout``/``on_stderr`` (plain functions) receive output text as it
        is produced: the command is streamed, and killed if this call is
        abandoned.
        ``background=True`` returns a ``CommandHandle`` at once; ``stdin=True``
        then keeps its stdin open for ``send_stdin``, ``tag`` labels it, and
        ``on_stdout``/``on_stderr`` are called by the handle's ``wait()``. A
        background process outlives this client and the server.
        """
        limit = float(timeout or 0)
        body = _body(cmd, envs, cwd, user, limit)
        if background:
            if isinstance(stdin, str):
                body["stdin_data"] = stdin
            elif stdin:
                body["stdin"] = "open"
            if tag is not None:
                body["tag"] = tag
            data = await self._connection.request_json("POST", self._processes, json=body)
            return CommandHandle(
                self._connection,
                self._processes,
                int(data["pid"]),
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        if isinstance(stdin, bool):
            raise errors.ValidationFailed(
                "an open stdin needs background=True; give a string to pass input", field="stdin"
            )
        if stdin is not None:
            body["stdin"] = stdin
        wait = limit + EXEC_TIMEOUT_MARGIN if limit else None
        if on_stdout is not None or on_stderr is not None:
            events = ndjson(
                self._connection, "POST", f"{self._path}/stream", body=body, timeout=wait
            )
            result = await collect(events, on_stdout, on_stderr)
        else:
            data = await self._connection.request_json("POST", self._path, json=body, timeout=wait)
            result = CommandResult.from_dict(data)
        if check and (result.exit_code != 0 or result.timed_out):
            raise CommandExitError(result)
        return result

    async def list(self, *, running: bool | None = None) -> builtins.list[ProcessInfo]:
        """Processes started in the background (and streamed commands), running or
        ended in the last 10 minutes."""
        params = None if running is None else {"running": "true" if running else "false"}
        data = await self._connection.request_json("GET", self._processes, params=params)
        return [ProcessInfo.from_dict(item) for item in data["processes"]]

    async def connect(
        self,
        pid: int,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandHandle:
        """A handle to a process started earlier (by anyone, from any client,
        before a server restart too); NotFound if unknown. The handlers are
        called by the handle's ``wait()``."""
        handle = CommandHandle(
            self._connection, self._processes, pid, on_stdout=on_stdout, on_stderr=on_stderr
        )
        await handle.info()
        return handle

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        await CommandHandle(self._connection, self._processes, pid).send_stdin(data)

    async def close_stdin(self, pid: int) -> None:
        await CommandHandle(self._connection, self._processes, pid).close_stdin()

    async def kill(self, pid: int) -> bool:
        """SIGKILL a process group; False if it had already ended or is unknown."""
        return await CommandHandle(self._connection, self._processes, pid).kill()
