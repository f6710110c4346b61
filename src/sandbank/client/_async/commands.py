"""Running commands inside a sandbox."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._config import EXEC_TIMEOUT_MARGIN
from ..exceptions import CommandExitError
from ..models import CommandResult
from ._http import AsyncApiConnection


class AsyncCommands:
    def __init__(self, connection: AsyncApiConnection, sandbox_path: str) -> None:
        self._connection = connection
        self._path = f"{sandbox_path}/exec"

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        stdin: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``cmd`` to completion and return its exit code and output.

        A string runs through ``sh -c``; a list is an argv run as is.
        ``timeout`` is in seconds, ``0`` or ``None`` for no limit; a command
        that outlives it is killed and comes back with ``timed_out`` set.
        With ``check=True`` a non-zero exit (or a timeout) raises
        ``CommandExitError`` carrying the result.
        """
        limit = float(timeout or 0)
        body: dict[str, Any] = {"command": cmd} if isinstance(cmd, str) else {"cmd": list(cmd)}
        body["user"] = user
        body["timeout"] = limit
        if envs:
            body["env"] = dict(envs)
        if cwd is not None:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = stdin
        data = await self._connection.request_json(
            "POST",
            self._path,
            json=body,
            timeout=limit + EXEC_TIMEOUT_MARGIN if limit else None,
        )
        result = CommandResult.from_dict(data)
        if check and (result.exit_code != 0 or result.timed_out):
            raise CommandExitError(result)
        return result
