"""``exec``: run one command, stream its output as it comes, report how it ended.

Every command leads its own session (so its own process group): a timeout or a
client that goes away kills the whole group, grandchildren included. A command
that leaves a background process holding its stdout/stderr open is not waited
for beyond a short drain once the command itself has exited.

The cost of a short command is mostly fixed overhead, kept low on purpose:

* it is started with ``posix_spawn`` (a ``vfork``), not ``fork``, and without
  the subprocess module (see ``spawn``);
* one ``poll`` set, no selector object per command;
* the ``ok`` header is held back briefly and goes out in the same write as
  the first output or the exit, so ``true`` is answered with one ``sendall``
  and the client wakes up once;
* once the command has exited and its pipes are at EOF the answer goes out at
  once: the drain only waits for pipes that something else still holds open.
"""

from __future__ import annotations

import binascii
import errno
import math
import os
import select
import stat
import time

from sandbank.agent import reaper, spawn
from sandbank.agent.base import Identity, identity, os_error, resolve
from sandbank.agent.conn import Conn, errors
from sandbank.protocol.agent import CHUNK, STDERR, STDOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.reaper import Child, Spawned

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: After the command exits, how long output still held open by its background
#: children is forwarded before the answer goes out.
DRAIN_SECONDS = 0.1
#: How long the ``ok`` header waits for output or the exit to share its write;
#: a command silent for longer gets its header alone.
HEADER_HOLD_SECONDS = 0.005

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def run(conn: Conn, req: dict[str, Any]) -> None:
    argv = _argv(req.get("cmd"))
    who = identity(req.get("user"))
    env = _env(req.get("env"), who)
    cwd = _cwd(req.get("cwd"), who)
    timeout = _timeout(req.get("timeout"))
    stdin = _stdin(req.get("stdin_b64"))

    def start() -> Spawned:
        return spawn.spawn(argv, env, cwd, who, stdin)

    begun = time.monotonic()
    try:
        child = reaper.get().spawn(start)
    except OSError as exc:
        _not_started(conn, argv[0], cwd, who.name, exc, begun)
        return
    except ValueError as exc:  # an argument or variable with a NUL byte
        raise errors.BadRequest(f"cannot run {argv[0]}: {exc}") from exc
    finally:
        os.close(stdin)
    try:
        conn.ok(pid=child.pid, hold=True)
        timed_out, gone = _stream(conn, child, timeout)
    except BaseException:
        # Whatever broke (most likely the client hung up mid-send), nobody will
        # read this command's output any more.
        if child.exit_code is None:
            child.kill_group()
        raise
    finally:
        child.close()
    if gone:
        return
    assert child.exit_code is not None and child.ended is not None
    conn.send_json(
        {
            "exit_code": child.exit_code,
            "timed_out": timed_out,
            "duration_ms": round((child.ended - child.started) * 1000, 3),
        }
    )


def _stream(conn: Conn, child: Child, timeout: float | None) -> tuple[bool, bool]:
    """Forward output until the command has exited and its pipes are drained.
    Returns (timed_out, client_gone); what is still held goes out with the exit."""
    kinds = {child.stdout: STDOUT, child.stderr: STDERR}
    open_pipes = set(kinds)
    client = conn.sock.fileno()
    deadline = None if timeout is None else child.started + timeout
    hold_until = time.monotonic() + HEADER_HOLD_SECONDS
    timed_out = False
    drain_until: float | None = None
    poller = select.poll()
    for fd in (*kinds, child.wake_fd, client):
        poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        waits: list[float] = []
        if child.exit_code is not None:
            if drain_until is None:
                drain_until = now + DRAIN_SECONDS
            if not open_pipes or now >= drain_until:
                return timed_out, False
            waits.append(drain_until - now)
        elif deadline is not None:
            if now >= deadline:
                child.kill_group()
                timed_out, deadline = True, None
                continue
            waits.append(deadline - now)
        if conn.holding:
            if now >= hold_until:
                conn.flush()
            else:
                waits.append(hold_until - now)
        wait = min(waits) if waits else None
        # poll counts milliseconds: round up, or a sub-millisecond wait would spin.
        events = poller.poll(None if wait is None else math.ceil(wait * 1000))
        fresh = False
        for fd, event in events:
            if not event & _READABLE:
                continue
            if fd == child.wake_fd:
                poller.unregister(fd)
            elif fd == client:
                if not _client_alive(conn):
                    if child.exit_code is None:
                        child.kill_group()
                    return timed_out, True
            else:
                data = os.read(fd, CHUNK)
                if data:
                    # Straight out, unless it can join the header or the exit.
                    conn.send(kinds[fd], data, hold=conn.holding or child.exit_code is not None)
                    fresh = True
                else:
                    poller.unregister(fd)
                    open_pipes.discard(fd)
        # Output goes out as it comes, unless the exit is due to follow right away.
        if fresh and conn.holding and not (child.exit_code is not None and not open_pipes):
            conn.flush()


def _client_alive(conn: Conn) -> bool:
    """The client sends nothing during an exec; readable means it hung up."""
    try:
        return bool(conn.sock.recv(4096))
    except OSError:
        return False


def _not_started(conn: Conn, name: str, cwd: str, user: str, exc: OSError, begun: float) -> None:
    """A command that cannot be executed gets the shell's answer (127/126); a
    failure before exec (entering cwd, switching user) is an error of the request."""
    if exc.filename is None or exc.filename == cwd:
        cls = type(os_error(exc))
        raise cls(f"cannot start {name} as {user} in {cwd}: {exc.strerror or exc}") from exc
    code = 127 if exc.errno == errno.ENOENT else 126
    reason = "command not found" if code == 127 else (exc.strerror or str(exc)).lower()
    conn.ok(pid=None, hold=True)
    conn.send(STDERR, f"{name}: {reason}\n".encode(), hold=True)
    duration = round((time.monotonic() - begun) * 1000, 3)
    conn.send_json({"exit_code": code, "timed_out": False, "duration_ms": duration})


# -- request fields ------------------------------------------------------------------


def _argv(cmd: object) -> list[str]:
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise errors.BadRequest("cmd must be a non-empty list of strings")
    return cmd


def _env(given: object, who: Identity) -> dict[str, str]:
    """The request's variables, plus what a login would have set when missing.
    The agent's own environment never leaks into commands."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise errors.BadRequest("env must be an object of strings")
    env: dict[str, str] = {}
    for key, value in given.items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise errors.BadRequest(f"invalid environment variable {key!r}")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", who.home)
    env.setdefault("USER", who.name)
    env.setdefault("LOGNAME", who.name)
    env.setdefault("SHELL", "/bin/bash")
    env.setdefault("LANG", "C.UTF-8")
    return env


def _cwd(raw: object, who: Identity) -> str:
    cwd = who.home if raw is None or raw == "" else resolve(raw, who)
    try:
        st = os.stat(cwd)
    except FileNotFoundError:
        raise errors.FileNotFound(f"working directory {cwd} does not exist") from None
    except OSError as exc:
        raise os_error(exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise errors.NotADirectory(f"working directory {cwd} is not a directory")
    return cwd


def _timeout(raw: object) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise errors.BadRequest("timeout must be a positive number of seconds, or null")
    return float(raw)


def _stdin(raw: object) -> int:
    """A file descriptor holding the whole input: a memfd, so feeding a command
    that does not read its stdin can never block the output loop; else /dev/null."""
    if raw is None:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if not isinstance(raw, str):
        raise errors.BadRequest("stdin_b64 must be a base64 string")
    try:
        data = binascii.a2b_base64(raw)
    except binascii.Error as exc:
        raise errors.BadRequest(f"stdin_b64 is not valid base64: {exc}") from None
    fd = os.memfd_create("sandbank-stdin", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
