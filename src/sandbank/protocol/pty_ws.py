"""The terminal WebSocket's framing, shared by the server, the SDK and the CLI
(stdlib only; see docs/terminals.md).

* Binary frames are terminal bytes, both ways: output from the server, input
  (keystrokes, pasted text) from the client.
* Text frames are small JSON objects with a ``type``:

  - server -> client: ``ready`` {pid, cols, rows, offset} first (``offset``: where
    the replay starts, in bytes of the terminal's output); ``truncated``
    {offset} when the replay starts later than asked because older output was
    dropped; ``resized`` {cols, rows} after a ``resize``; ``error`` {code, message,
    ...} for a control frame that failed (the session goes on); ``exit``
    {exit_code, signal, timed_out} last, then a normal close (1000).
  - client -> server: ``resize`` {cols, rows}; ``input`` {data} (text, for
    clients that cannot send binary frames easily).

A session refused before it starts closes with ``4000 + HTTP status`` (4401,
4404, 4409, 4422, ...) and the error's message as the reason, where the
upgrade could not be answered with the HTTP error itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Close code for a session that was refused: ``CLOSE_BASE + status``.
CLOSE_BASE = 4000
#: The kernel's window size fields are 16 bits.
MAX_SIZE = 65535
#: Largest text frame the server reads; control frames are tiny.
MAX_CONTROL = 4096


class FramingError(ValueError):
    """A text frame that is not one of the control messages."""


@dataclass(frozen=True)
class Resize:
    cols: int
    rows: int


@dataclass(frozen=True)
class Input:
    data: bytes


def event(kind: str, **fields: Any) -> str:
    """A server -> client control frame."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def resize(cols: int, rows: int) -> str:
    """A client -> server ``resize`` frame."""
    return event("resize", cols=cols, rows=rows)


def parse_control(text: str) -> Resize | Input:
    """A client's text frame; sizes are checked by whoever applies them."""
    if len(text) > MAX_CONTROL:
        raise FramingError(f"control frames are at most {MAX_CONTROL} characters")
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise FramingError(f"a text frame must be a JSON object: {exc}") from None
    if not isinstance(message, dict):
        raise FramingError("a text frame must be a JSON object")
    kind = message.get("type")
    if kind == "resize":
        cols, rows = message.get("cols"), message.get("rows")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (cols, rows)):
            raise FramingError("resize needs integer cols and rows")
        return Resize(cols, rows)  # type: ignore[arg-type]
    if kind == "input":
        data = message.get("data")
        if not isinstance(data, str):
            raise FramingError("input needs data as a string")
        return Input(data.encode("utf-8", "surrogateescape"))
    raise FramingError(f"unknown control frame type {kind!r}: use resize or input")


def parse_event(text: str) -> dict[str, Any]:
    """A server's text frame, as a dict with a ``type``."""
    message = json.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FramingError(f"not a control event: {text[:80]!r}")
    return message
