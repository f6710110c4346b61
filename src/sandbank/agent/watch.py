"""``watch``: inotify events under a directory, streamed until the client hangs up.

Stdlib only: inotify is reached through ctypes on the C library (glibc and
musl both export ``inotify_init1`` and ``inotify_add_watch``). Loaded on the
first watch; most sandboxes never start one.

Each inotify event becomes one or more ``J{"event": "fs", "type", "name",
"is_dir"}`` frames (``name`` relative to the watched directory). While nothing
happens a ``keepalive`` goes out every ``KEEPALIVE`` seconds, which is also how
a client that vanished without closing is noticed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import time

from sandbank.agent.base import resolve
from sandbank.agent.conn import Conn, errors, suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = (
    IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)  # fmt: skip
#: inotify bit -> event type, in the order several bits of one event are reported.
TYPES = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MOVED_FROM, "rename"),
    (IN_ATTRIB, "chmod"),
    (IN_MODIFY, "write"),
    (IN_DELETE, "remove"),
)
EVENT = struct.Struct("iIII")
#: Seconds of silence after which a keepalive goes out.
KEEPALIVE = 15.0
READ_SIZE = 64 * 1024


class _Inotify:
    """One inotify instance and the directories it watches (wd <-> path)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise self._error("inotify_init1")
        self.fd: int = fd
        self.paths: dict[int, str] = {}

    def _error(self, what: str, path: str | None = None) -> OSError:
        code = ctypes.get_errno()
        if code == errno.ENOSPC:
            return OSError(code, f"{what}: the sandbox's inotify watch limit is reached", path)
        if code == errno.EMFILE:
            return OSError(code, f"{what}: too many inotify instances in the sandbox", path)
        return OSError(code, f"{what}: {os.strerror(code)}", path)

    def add(self, path: str) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            raise self._error("inotify_add_watch", path)
        self.paths[wd] = path

    def add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it (symlinks are not followed)."""
        self.add(top)
        for root, dirs, _ in os.walk(top):
            for name in dirs:
                path = os.path.join(root, name)
                try:
                    self.add(path)
                except FileNotFoundError:  # gone since the walk listed it
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue
                    raise

    def forget_tree(self, top: str) -> None:
        """Stop watching ``top`` and what is below it: it moved away."""
        prefix = top + "/"
        for wd, path in list(self.paths.items()):
            if path == top or path.startswith(prefix):
                self._libc.inotify_rm_watch(self.fd, wd)
                del self.paths[wd]

    def close(self) -> None:
        os.close(self.fd)


def watch(conn: Conn, req: dict[str, Any]) -> None:
    """``watch`` {path, recursive, user} -> ok+path, then events until hang-up."""
    top = resolve(req.get("path"), req.get("user"))
    recursive = bool(req.get("recursive", False))
    st = os.stat(top)  # a missing path is file_not_found, before any answer
    if not stat.S_ISDIR(st.st_mode):
        raise errors.NotADirectory(f"{top} is not a directory")
    try:
        notify = _Inotify()
    except AttributeError as exc:  # a C library without inotify
        raise errors.RuntimeFailure(f"inotify is not available in this sandbox: {exc}") from None
    try:
        if recursive:
            notify.add_tree(top)
        else:
            notify.add(top)
        conn.ok(path=top, recursive=recursive)
        _stream(conn, notify, top, recursive)
    finally:
        notify.close()


def _stream(conn: Conn, notify: _Inotify, top: str, recursive: bool) -> None:
    poller = select.poll()
    poller.register(notify.fd, select.POLLIN)
    poller.register(conn.sock.fileno(), select.POLLIN | select.POLLHUP)
    quiet_since = time.monotonic()
    while True:
        wait_ms = max(0, int((quiet_since + KEEPALIVE - time.monotonic()) * 1000))
        ready = poller.poll(wait_ms)
        if not ready:
            conn.send_json({"event": "keepalive"})
            quiet_since = time.monotonic()
            continue
        for fd, _ in ready:
            if fd != notify.fd:
                return  # the client hung up (or sent something, which it never should)
            with suppress(BlockingIOError):
                for out in _events(notify, os.read(notify.fd, READ_SIZE), top, recursive):
                    conn.send_json(out, hold=True)
                    if out["event"] == "end":
                        conn.flush()
                        return
                conn.flush()
                quiet_since = time.monotonic()


def _events(notify: _Inotify, buf: bytes, top: str, recursive: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while offset + EVENT.size <= len(buf):
        wd, mask, _cookie, length = EVENT.unpack_from(buf, offset)
        raw = buf[offset + EVENT.size : offset + EVENT.size + length].rstrip(b"\0")
        offset += EVENT.size + length
        if mask & IN_Q_OVERFLOW:
            out.append({"event": "overflow"})
            continue
        base = notify.paths.get(wd)
        if base is None:
            continue
        if mask & IN_IGNORED:
            notify.paths.pop(wd, None)
            continue
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            if base == top:
                gone = "removed" if mask & IN_DELETE_SELF else "moved"
                out.append({"event": "end", "reason": f"the watched directory was {gone}"})
                return out
            continue  # a subdirectory: its parent's watch reports it
        path = os.path.join(base, os.fsdecode(raw)) if raw else base
        is_dir = bool(mask & IN_ISDIR)
        if recursive and is_dir:
            if mask & (IN_CREATE | IN_MOVED_TO):
                with suppress(OSError):  # gone already, or the watch limit: events still flow
                    notify.add_tree(path)
            elif mask & IN_MOVED_FROM:
                notify.forget_tree(path)
        name = os.path.relpath(path, top)
        for bits, kind in TYPES:
            if mask & bits:
                out.append({"event": "fs", "type": kind, "name": name, "is_dir": is_dir})
    return out
