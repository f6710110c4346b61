"""One client connection, and the agent's log: all a readiness ping needs.

This module is on the agent's start path (the time to a sandbox's first answer),
so it imports nothing beyond the wire format: no ``socket``, and
``sandbank.errors`` only on demand (``errors`` here, which the other modules
of the agent use too).
"""

from __future__ import annotations

import os
import sys
import time

from sandbank.protocol.agent import (
    HEADER,
    MAX_FRAME,
    FrameError,
    encode,
    encode_json,
    recv_frame,
    recv_json,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import Any

    from sandbank import errors as errors
else:

    class _Errors:
        """``sandbank.errors``, imported when an error is first raised or caught.

        It imports ``typing`` (which pulls in re, enum, collections, ...): ~9 ms
        that every sandbox would otherwise pay before its first command, though
        a command that succeeds needs none of it. ``except errors.X`` clauses
        are only evaluated once something was raised, so they stay free too.
        """

        def __getattr__(self, name: str) -> object:
            from sandbank import errors as module

            return getattr(module, name)

    errors = _Errors()


class suppress:
    """``contextlib.suppress``, without importing contextlib on the start path."""

    __slots__ = ("_kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self._kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        return kind is not None and issubclass(kind, self._kinds)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp} sandbank-agent[{os.getpid()}]: {message}\n")


class Conn:
    """One client connection, carrying one operation.

    ``answered`` flips on the first header: an error after that point cannot be
    framed as the reply any more, so the connection is simply closed and the
    client sees a cut stream.

    Frames can be held back (``hold``) and go out together with the next ones
    in a single ``sendall``: a command that exits at once is answered with one
    write (header, output, exit) instead of three, and the client wakes once.
    """

    __slots__ = ("_held", "_inbox", "answered", "sock")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.answered = False
        self._held = bytearray()
        self._inbox = bytearray()

    def recv_json(self) -> dict[str, Any]:
        return recv_json(self.sock)

    def recv_frame(self) -> tuple[bytes, bytes]:
        return recv_frame(self.sock)

    def recv_view(self) -> tuple[bytes, memoryview]:
        """The next frame, its payload a view of a buffer this connection reuses
        (valid until the next call): uploads allocate, zero and copy nothing per frame."""
        head = bytearray(HEADER.size)
        self._fill(memoryview(head))
        kind, length = HEADER.unpack(head)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes is too large")
        if len(self._inbox) < length:
            self._inbox = bytearray(length)
        view = memoryview(self._inbox)[:length]
        self._fill(view)
        return kind, view

    def _fill(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if not count:
                raise FrameError("connection closed mid-frame" if got else "connection closed")
            got += count

    def ok(self, *, hold: bool = False, **fields: Any) -> None:
        self.answered = True
        self._out(encode_json({"ok": True, **fields}), hold)

    def fail(self, exc: errors.SandbankError) -> None:
        if self.answered:
            return
        self.answered = True
        self._out(encode_json({"ok": False, **exc.to_dict()}), False)

    def send(self, kind: bytes, payload: bytes = b"", *, hold: bool = False) -> None:
        if hold or self._held:
            self._out(HEADER.pack(kind, len(payload)) + payload, hold)
        else:
            self.sock.sendall(encode(kind, payload))

    def send_json(self, obj: dict[str, Any], *, hold: bool = False) -> None:
        self._out(encode_json(obj), hold)

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def flush(self) -> None:
        if self._held:
            data, self._held = self._held, bytearray()
            self.sock.sendall(data)

    def _out(self, frame: bytes, hold: bool) -> None:
        self._held += frame
        if not hold:
            self.flush()
