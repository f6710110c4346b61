"""The agent's socket server and its life as the sandbox's PID 1.

One connection carries one operation, on a thread of its own. No operation
depends on a connection outliving it and the agent keeps nothing per client, so
the server reconnects for every operation and may go away at any moment (a
restart, a checkpoint of the whole sandbox) without the agent noticing.

The socket is either handed over already listening (``--listen-fd``: the
runtime creates it on the host before the sandbox starts, so the sandbox never
has a moment to tamper with it and the server can connect at once), or bound
here (``--socket``: tests, runs on a host).

Start-up is on the critical path of every sandbox creation, so this module
imports only what answering a first ``ping`` needs, about 2 ms above the bare
interpreter: ``_socket``, ``_signal`` and ``_thread`` rather than the
``socket``, ``signal`` and ``threading`` modules around them (their enum
conversions, ``selectors`` and ``functools`` cost ~6 ms), no ``json`` (see the
wire format's codec) and no ``sandbank.errors``. The rest, the reaper among it,
loads on a thread once that first answer is out.
"""

from __future__ import annotations

import _signal
import _socket
import _thread
import errno
import os
import select
import sys
import time

from sandbank.agent.conn import Conn, log, suppress
from sandbank.protocol.agent import SOCKET_DIR, SOCKET_NAME, VERSION, FrameError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

    from sandbank import errors

#: sun_path holds 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107
PR_SET_CHILD_SUBREAPER = 36
USAGE = "usage: python3 -S -m sandbank.agent [--socket PATH | --listen-fd FD]"

#: Held until the first operation (the runtime's readiness ping) is answered.
_before_first_answer = _thread.allocate_lock()
_before_first_answer.acquire()


def main(argv: list[str]) -> int:
    try:
        path, listen_fd = _parse(argv)
    except ValueError as exc:
        sys.stderr.write(f"{USAGE}\n{exc}\n")
        return 2
    listener: _socket.socket | None = None
    inode = 0
    try:
        _signal.signal(_signal.SIGTERM, _stop)
        _signal.signal(_signal.SIGINT, _stop)
        _adopt_orphans()
        if listen_fd is None:
            listener, inode = _listen(path)
        else:
            listener = _inherit(listen_fd)
        _thread.start_new_thread(_warm_up, ())
        log(f"listening on {path if listen_fd is None else f'descriptor {listen_fd}'}")
        _serve(listener)
    except SystemExit:
        log("stopping")
    except OSError as exc:
        log(f"cannot serve on {path}: {exc}")
        return 1
    finally:
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        if listener is not None:
            _close(listener, path, inode)
        # Inside a sandbox the kernel kills everything once PID 1 is gone; outside
        # one (tests, a debugging host run) nothing would, so do it here.
        reaper = sys.modules.get("sandbank.agent.reaper")
        started = reaper.started() if reaper is not None else None
        for child in started.children() if started is not None else []:
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


def _parse(argv: list[str]) -> tuple[str, int | None]:
    path = f"{SOCKET_DIR}/{SOCKET_NAME}"
    listen_fd: int | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--socket" and args:
            path = args.pop(0)
        elif arg.startswith("--socket="):
            path = arg.partition("=")[2]
        elif arg == "--listen-fd" and args and args[0].isdigit():
            listen_fd = int(args.pop(0))
        else:
            raise ValueError(f"unexpected argument {arg!r}")
    if not path:
        raise ValueError("--socket needs a path")
    return os.path.abspath(path), listen_fd


def _inherit(fd: int) -> _socket.socket:
    """The listening socket handed over as ``fd`` (the runtime passes it as stdin).

    It moves to a descriptor of its own, closed on exec, and ``fd`` becomes
    /dev/null: nothing the agent starts may inherit the agent's socket.
    """
    sock = _socket.socket(fileno=os.dup(fd))
    if sock.family != _socket.AF_UNIX or not sock.getsockopt(
        _socket.SOL_SOCKET, _socket.SO_ACCEPTCONN
    ):
        sock.close()
        raise OSError(errno.ENOTSOCK, f"descriptor {fd} is not a listening unix socket")
    # O_NONBLOCK belongs to the open file, which the runtime's copy shared.
    sock.setblocking(True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, fd)
    os.close(null)
    return sock


def _listen(path: str) -> tuple[_socket.socket, int]:
    """The listening socket, and the inode of its file (to recognise it at exit)."""
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with suppress(FileNotFoundError):
        os.unlink(path)  # left by an agent that did not exit cleanly
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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


def _close(listener: _socket.socket, path: str, inode: int) -> None:
    listener.close()
    if not inode:
        return  # handed over: the path is the runtime's
    # Unlink the path only while it still names our socket, not a successor's.
    with suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _warm_up() -> None:
    """Import what the operations need while nobody waits for it; only after the
    first answer, so that the readiness ping never competes for the interpreter."""
    with _before_first_answer:
        pass
    from sandbank.agent import files, processes, reaper, system  # noqa: F401

    reaper.get()


#: The listening socket, for ``park`` (see agent/parking.py).
_listener: Any = None


def _serve(listener: _socket.socket) -> None:
    global _listener
    _listener = listener
    # A signal may land on any thread, and Python runs its handler on the main
    # thread only once that thread runs Python code: a bare accept() could sleep
    # through SIGTERM. The wakeup fd makes the poll below return for it.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with suppress(BlockingIOError):
                    os.read(wake_r, 512)
            elif "sandbank.agent.parking" in sys.modules and _parking().parked():
                _parking().unpark(listener)
            else:
                _accept(listener)


def _accept(listener: _socket.socket) -> None:
    try:
        # The C socket's accept: a descriptor (close-on-exec), not a socket object.
        fd, _ = listener._accept()  # type: ignore[attr-defined]
    except BlockingIOError:
        return
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log(f"accept: {exc}; retrying")
            time.sleep(0.05)
            return
        raise
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        _thread.start_new_thread(_handle, (sock,))
    except RuntimeError as exc:  # no thread to be had: refuse this one, keep serving
        log(f"cannot start a handler thread: {exc}")
        sock.close()


def _handle(sock: _socket.socket) -> None:
    conn = Conn(sock)
    try:
        try:
            req = conn.recv_json()
        except ValueError as exc:
            raise _errors().BadRequest(f"the request is not a JSON object: {exc}") from None
        _dispatch(conn, req)
    except (FrameError, ConnectionError):
        pass  # the client hung up; every operation has cleaned up after itself
    except Exception as exc:
        _fail(conn, exc)
    finally:
        sock.close()
        if _before_first_answer.locked():
            with suppress(RuntimeError):  # another handler let go of it first
                _before_first_answer.release()


def _parking() -> Any:
    from sandbank.agent import parking

    return parking


def _errors() -> Any:
    from sandbank import errors

    return errors


def _fail(conn: Conn, exc: Exception) -> None:
    errors = _errors()
    if isinstance(exc, errors.SandbankError):
        _answer(conn, exc)
    elif isinstance(exc, OSError):
        from sandbank.agent.base import os_error

        _answer(conn, os_error(exc))
    else:
        import traceback

        log(f"operation failed:\n{traceback.format_exc()}")
        _answer(conn, errors.RuntimeFailure(f"agent error: {exc!r}"))


def _answer(conn: Conn, exc: errors.SandbankError) -> None:
    with suppress(OSError):
        conn.fail(exc)


#: Background processes: operation -> handler in ``jobops``.
_JOB_OPS = {
    "start": "start",
    "jobs": "list_jobs",
    "attach": "attach",
    "wait": "wait",
    "stdin": "stdin",
    "signal": "send_signal",
    "resize": "resize",
}


#: Directory trees, batches, ownership, search and watches: operation -> (module, handler).
_TREE_OPS = {
    "tar": ("tarout", "tar_dir"),
    "untar": ("archive", "untar"),
    "write_files": ("fileops", "write_files"),
    "chmod": ("fileops", "chmod"),
    "chown": ("fileops", "chown"),
    "find": ("fileops", "find"),
    "watch": ("watch", "watch"),
}


def _dispatch(conn: Conn, req: dict[str, Any]) -> None:
    op = req.get("op")
    if op == "ping":
        conn.ok(pid=os.getpid(), version=VERSION)
        return
    if op == "exec":
        from sandbank.agent import processes

        processes.run(conn, req)
        return
    if isinstance(op, str) and op in _JOB_OPS:
        # Loaded on the first such operation: most sandboxes never start one.
        from sandbank.agent import jobops

        getattr(jobops, _JOB_OPS[op])(conn, req)
        return
    if op == "park":
        _parking().park(conn, _listener)
        return
    if op == "hostname":
        from sandbank.agent import system

        system.hostname(conn, req)
        return
    if isinstance(op, str) and op in _TREE_OPS:
        import importlib  # loaded with the first such operation

        module, name = _TREE_OPS[op]
        getattr(importlib.import_module(f"sandbank.agent.{module}"), name)(conn, req)
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
        raise _errors().BadRequest(f"unknown operation {op!r}")
    handler(conn, req)
