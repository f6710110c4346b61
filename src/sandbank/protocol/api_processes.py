"""Wire models of the ``/v1`` process endpoints: background processes started
in a sandbox, read back, signalled (the PTY ones build on ``ProcessOut``:
``pty_api.py``). Strict like the rest of ``api.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from sandbank.protocol.api import Strict, _check_env


class StartProcessRequest(Strict):
    """``POST /v1/sandboxes/{id}/processes``: a background process."""

    cmd: list[Annotated[str, Field(max_length=131072)]] | None = None
    command: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: Literal["user", "root"] = "user"
    tag: str | None = Field(default=None, max_length=256)
    #: Seconds; 0 means no limit. On expiry the process group is killed.
    timeout: float = 0
    #: ``none``: no input (EOF at once); ``open``: fed later through ``/stdin``.
    stdin: Literal["none", "open"] = "none"
    #: Input given up front (then closed); excludes ``stdin: open``.
    stdin_data: str | None = None
    #: Bytes of each stream kept for replay (up to the server's cap, its default).
    max_output: int | None = Field(default=None, ge=0)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(value)

    @model_validator(mode="after")
    def _check(self) -> StartProcessRequest:
        if (self.cmd is None) == (self.command is None):
            raise ValueError("give exactly one of cmd (an argv list) or command (a shell string)")
        if self.cmd is not None and not self.cmd:
            raise ValueError("cmd must not be empty")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0 (0 means no limit)")
        if self.stdin == "open" and self.stdin_data is not None:
            raise ValueError("give stdin_data (input up front) or stdin 'open', not both")
        return self


class ProcessOut(BaseModel):
    pid: int
    tag: str | None
    cmd: list[str]
    cwd: str
    env_keys: list[str]
    user: str
    running: bool
    started_at: datetime
    ended_at: datetime | None = None
    exit_code: int | None = None
    #: The signal that ended it (``exit_code`` is then 128+N).
    signal: int | None = None
    timed_out: bool = False
    #: ``none``, ``bytes``, ``open`` or ``closed``.
    stdin: str = "none"
    #: Bytes of output kept so far (both streams): where ``output`` ends today.
    output_bytes: int = 0
    #: Streams that hit the output cap (later output was dropped).
    truncated: list[str] = Field(default_factory=list)
    #: The variables given with the command (the sandbox's own: names only).
    env: dict[str, str] = Field(default_factory=dict)
    #: ``background``, or ``foreground`` (streamed exec: killed with its client).
    kind: str = "background"


class ProcessList(BaseModel):
    processes: list[ProcessOut]


class SignalRequest(Strict):
    #: A number (``15``) or a name (``"TERM"``, ``"SIGTERM"``).
    signal: StrictInt | StrictStr


class SignalOut(BaseModel):
    pid: int
    signal: int
