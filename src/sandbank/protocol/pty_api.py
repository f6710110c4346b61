"""Wire models of the terminal routes, ``/v1/sandboxes/{id}/pty`` (server side)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sandbank.protocol.api import Strict, _check_env
from sandbank.protocol.api_processes import ProcessOut

#: The kernel's window size fields are 16 bits.
MAX_SIZE = 65535
Cols = Annotated[int, Field(ge=1, le=MAX_SIZE, description="Columns, 1-65535.")]
Rows = Annotated[int, Field(ge=1, le=MAX_SIZE, description="Rows, 1-65535.")]


class CreatePtyRequest(Strict):
    """``POST /v1/sandboxes/{id}/pty``: a terminal running the user's login
    shell, or ``cmd``/``command``."""

    cols: Cols = 80
    rows: Rows = 24
    cmd: list[Annotated[str, Field(max_length=131072)]] | None = None
    command: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: Literal["user", "root"] = "user"
    tag: str | None = Field(default=None, max_length=256)
    #: Seconds; 0 means no limit. On expiry the terminal's session is killed.
    timeout: float = 0

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(value)

    @model_validator(mode="after")
    def _check(self) -> CreatePtyRequest:
        if self.cmd is not None and self.command is not None:
            raise ValueError("give cmd (an argv list) or command (a shell string), not both")
        if self.cmd is not None and not self.cmd:
            raise ValueError("cmd must not be empty (leave it out for a login shell)")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0 (0 means no limit)")
        return self


class ResizePtyRequest(Strict):
    cols: Cols
    rows: Rows


class PtyOut(ProcessOut):
    """A terminal: a process record plus its window size."""

    cols: int
    rows: int


class PtyList(Strict):
    ptys: list[PtyOut]
