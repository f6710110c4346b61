"""Errors only the SDK raises; everything the server reports is in ``sandbank.errors``."""

from __future__ import annotations

from sandbank.errors import SandbankError

from .models import CommandResult

#: How much of a failed command's stderr its error message quotes.
_STDERR_TAIL = 400


class ServerUnreachable(SandbankError):
    """The sandbank server could not be reached, or dropped the connection."""

    code = "server_unreachable"
    status = 503


class CommandExitError(SandbankError):
    """``commands.run(..., check=True)`` saw a non-zero exit code or a timeout."""

    code = "command_failed"

    def __init__(self, result: CommandResult) -> None:
        if result.timed_out:
            message = "command timed out"
        else:
            message = f"command exited with code {result.exit_code}"
        tail = result.stderr.strip()[-_STDERR_TAIL:]
        if tail:
            message = f"{message}: {tail}"
        super().__init__(message, exit_code=result.exit_code, timed_out=result.timed_out)
        self.result = result

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr
