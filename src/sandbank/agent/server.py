"""The agent's socket server and its life as the sandbox's PID 1.

One connection carries one operation, on a thread of its own. No operation
depends on a connection outliving it and the agent keeps nothing per client, so
the server reconnects for every operation and may go away at any moment (a
restart, a checkpoint of the whole sandbox) without the agent noticing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import threading
import time

from sandbank import errors
from sandbank.agent.base import Conn, log, os_error
from sandbank.agent.reaper import Reaper
from sandbank.protocol.agent import SOCKET_DIR, SOCKET_NAME, VERSION, FrameError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

#: sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
PR_SET_CHILD_SUBREAPER = 36
USAGE = "usage: python3 -S -m sandbank.agent [--socket PATH]"


def main(argv: list[str]) -> int:
    try:
        path = _parse(argv)
    except ValueError as exc:
        sys.stderr.write(f"{USAGE}\n{exc}\n")
        return 2
    reaper = Reaper()
    listener: socket.socket | None = None
    inode = 0
    try:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        _adopt_orphans()
        listener, inode = _listen(path)
        reaper.start()
        threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
        log(f"listening on {path}")
        _serve(listener, reaper)
    except SystemExit:
        log("stopping")
    except OSError as exc:
        log(f"cannot serve on {path}: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if listener is not None:
            _close(listener, path, inode)
        # Inside a sandbox the kernel kills everything once PID 1 is gone; outside
        # one (tests, a debugging host run) nothing would, so do it here.
        for child in reaper.children():
            child.kill_group()
    return 0


def _stop(signo: int, frame: FrameType | None) -> None:
    # Runs on the main thread, in its poll loop: unwinds into main's cleanup.
    raise SystemExit(0)


def _adopt_orphans() -> None:
    """Outside a pid namespace of its own (tests, a run on a host) the agent is
    not PID 1; as a child subreaper it still gets, and reaps, the orphans of the
    commands it runs instead of leaving them to the host's init."""
    if os.getpid() == 1:
        return
    try:
        import ctypes  # only off the sandbox path: PID 1 needs none of this

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log(f"cannot become a child subreaper, orphans go to the host's init: {exc}")


def _parse(argv: list[str]) -> str:
    path = f"{SOCKET_DIR}/{SOCKET_NAME}"
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--socket" and args:
            path = args.pop(0)
        elif arg.startswith("--socket="):
            path = arg.partition("=")[2]
        else:
            raise ValueError(f"unexpected argument {arg!r}")
    if not path:
        raise ValueError("--socket needs a path")
    return os.path.abspath(path)


def _listen(path: str) -> tuple[socket.socket, int]:
    """The listening socket, and the inode of its file (to recognise it at exit)."""
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an agent that did not exit cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dirfd = -1
    address = path
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        # Reach the directory through a descriptor: the kernel resolves the
        # short /proc path to the same place.
        dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        address = f"/proc/self/fd/{dirfd}/{name}"
    # The socket is born 0600 rather than chmod-ed after a window in which any
    # process of the sandbox could connect; nothing else runs yet to mind the umask.
    umask = os.umask(0o177)
    try:
        sock.bind(address)
    finally:
        os.umask(umask)
        if dirfd >= 0:
            os.close(dirfd)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock, os.stat(path).st_ino


def _close(listener: socket.socket, path: str, inode: int) -> None:
    listener.close()
    # Unlink the path only while it still names our socket, not a successor's.
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _warm_up() -> None:
    """Import what the first operations need while nobody waits for it: the
    agent listens first, since readiness is on the sandbox-creation path."""
    from sandbank.agent import files, processes  # noqa: F401


def _serve(listener: socket.socket, reaper: Reaper) -> None:
    # A signal may land on any thread, and Python runs its handler on the main
    # thread only once that thread runs Python code: a bare accept() could sleep
    # through SIGTERM. The wakeup fd makes the poll below return for it.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            else:
                _accept(listener, reaper)


def _accept(listener: socket.socket, reaper: Reaper) -> None:
    try:
        sock, _ = listener.accept()
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log(f"accept: {exc}; retrying")
            time.sleep(0.05)
            return
        raise
    try:
        threading.Thread(target=_handle, args=(sock, reaper), daemon=True).start()
    except RuntimeError as exc:  # no thread to be had: refuse this one, keep serving
        log(f"cannot start a handler thread: {exc}")
        sock.close()


def _handle(sock: socket.socket, reaper: Reaper) -> None:
    conn = Conn(sock)
    try:
        try:
            req = conn.recv_json()
        except ValueError as exc:
            raise errors.BadRequest(f"the request is not a JSON object: {exc}") from None
        _dispatch(conn, req, reaper)
    except (FrameError, ConnectionError):
        pass  # the client hung up; every operation has cleaned up after itself
    except errors.SandbankError as exc:
        _answer(conn, exc)
    except OSError as exc:
        _answer(conn, os_error(exc))
    except Exception as exc:
        import traceback

        log(f"operation failed:\n{traceback.format_exc()}")
        _answer(conn, errors.RuntimeFailure(f"agent error: {exc!r}"))
    finally:
        sock.close()


def _answer(conn: Conn, exc: errors.SandbankError) -> None:
    with contextlib.suppress(OSError):
        conn.fail(exc)


def _dispatch(conn: Conn, req: dict[str, Any], reaper: Reaper) -> None:
    op = req.get("op")
    if op == "ping":
        conn.ok(pid=os.getpid(), version=VERSION)
        return
    if op == "exec":
        from sandbank.agent import processes

        processes.run(conn, req, reaper)
        return
    from sandbank.agent import files

    handler = {
        "read": files.read,
        "write": files.write,
        "list": files.list_dir,
        "stat": files.stat_path,
        "move": files.move,
        "mkdir": files.mkdir,
        "remove": files.remove,
    }.get(op if isinstance(op, str) else "")
    if handler is None:
        raise errors.BadRequest(f"unknown operation {op!r}")
    handler(conn, req)
