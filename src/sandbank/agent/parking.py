"""Letting go of the listening socket for a checkpoint, and taking a new one after.

The agent's listening socket, and every connection it accepts, were created
by the runtime on the host, so they belong to the host's network namespace,
which a checkpoint of the sandbox (CRIU) cannot contain. So before a
checkpoint the runtime asks the agent to ``park``: the listening descriptor
is replaced, in place, by the read end of a pipe (which CRIU saves like any
pipe), and the agent's main loop keeps polling the same descriptor number.

To come back (after a restore, or after a checkpoint that failed) the runtime
writes one byte into that pipe and offers the new listening socket on a
hand-over socket in the sandbox's run directory; the main loop wakes, fetches
the socket with ``SCM_RIGHTS`` and puts it where the pipe was. The runtime
only hands the socket to the process whose pid it expects (``SO_PEERCRED``).
"""

from __future__ import annotations

import _socket
import os

from sandbank.agent.conn import Conn, log
from sandbank.protocol.agent import HANDOFF_NAME, SOCKET_DIR

#: The write end of the pipe standing in for the listener while parked.
_wake_fd = -1


def parked() -> bool:
    return _wake_fd >= 0


def park(conn: Conn, listener: _socket.socket) -> None:
    global _wake_fd
    fd = listener.fileno()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.dup2(read_end, fd, inheritable=False)
    os.close(read_end)
    if _wake_fd >= 0:
        # Left from an earlier park (after a restore it may even be a copy of
        # the listener, put there with the rest of the pipe): it must go.
        os.close(_wake_fd)
    _wake_fd = write_end
    conn.ok(listen_fd=fd, wake_fd=write_end, pipe=os.fstat(fd).st_ino)


def unpark(listener: _socket.socket) -> None:
    """Called by the main loop when the parked descriptor is readable."""
    global _wake_fd
    fd = listener.fileno()
    try:
        os.read(fd, 64)
    except BlockingIOError:
        return
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(f"{SOCKET_DIR}/{HANDOFF_NAME}")
        _data, fds, _flags, _addr = _socket_recv_fds(sock)
    except OSError as exc:
        log(f"no listening socket handed over: {exc}")
        return
    finally:
        sock.close()
    if not fds:
        log("the hand-over sent no socket")
        return
    os.dup2(fds[0], fd, inheritable=False)
    for extra in fds:
        os.close(extra)
    os.close(_wake_fd)
    _wake_fd = -1
    listener.setblocking(True)
    log("serving on a new listening socket")


def _socket_recv_fds(sock: _socket.socket) -> tuple[bytes, list[int], int, object]:
    import array
    import socket

    fds = array.array("i")
    data, ancdata, flags, addr = sock.recvmsg(16, socket.CMSG_LEN(4 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds), flags, addr
