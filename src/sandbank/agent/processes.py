"""``exec``: run one command, stream its output as it comes, report how it ended.

Every command leads its own session (so its own process group): a timeout or a
client that goes away kills the whole group, grandchildren included. A command
that leaves a background process holding its stdout/stderr open is not waited
for beyond a short drain once the command itself has exited.
"""

from __future__ import annotations

import binascii
import errno
import os
import selectors
import stat
import subprocess
import time

from sandbank import errors
from sandbank.agent.base import Conn, Identity, identity, os_error, resolve
from sandbank.protocol.agent import CHUNK, STDERR, STDOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.reaper import Child, Reaper

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: After the command exits, how long output still held open by its background
#: children is forwarded before the answer goes out.
DRAIN_SECONDS = 0.1

_EXIT = b"exit"
_CLIENT = b"client"


def run(conn: Conn, req: dict[str, Any], reaper: Reaper) -> None:
    argv = _argv(req.get("cmd"))
    who = identity(req.get("user"))
    env = _env(req.get("env"), who)
    cwd = _cwd(req.get("cwd"), who)
    timeout = _timeout(req.get("timeout"))
    credentials = _credentials(who)
    stdin = _stdin(req.get("stdin_b64"))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            bufsize=0,
            **credentials,
        )

    begun = time.monotonic()
    try:
        child = reaper.spawn(start)
    except OSError as exc:
        _not_started(conn, argv[0], cwd, who.name, exc, begun)
        return
    except ValueError as exc:  # an argument or variable with a NUL byte
        raise errors.BadRequest(f"cannot run {argv[0]}: {exc}") from exc
    finally:
        if stdin >= 0:
            os.close(stdin)
    try:
        conn.ok(pid=child.pid)
        timed_out, gone = _stream(conn, child, timeout)
    except BaseException:
        # Whatever broke (most likely the client hung up mid-send), nobody will
        # read this command's output any more.
        if child.exit_code is None:
            child.kill_group()
        raise
    finally:
        assert child.popen.stdout is not None and child.popen.stderr is not None
        child.popen.stdout.close()
        child.popen.stderr.close()
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
    Returns (timed_out, client_gone)."""
    popen = child.popen
    assert popen.stdout is not None and popen.stderr is not None
    pipes = {popen.stdout.fileno(): STDOUT, popen.stderr.fileno(): STDERR}
    deadline = None if timeout is None else child.started + timeout
    timed_out = False
    drain_until: float | None = None
    sel = selectors.DefaultSelector()
    try:
        for fd, kind in pipes.items():
            sel.register(fd, selectors.EVENT_READ, kind)
        sel.register(child.wake_fd, selectors.EVENT_READ, _EXIT)
        sel.register(conn.sock, selectors.EVENT_READ, _CLIENT)
        while True:
            now = time.monotonic()
            wait: float | None = None
            if child.exit_code is not None:
                if drain_until is None:
                    drain_until = now + DRAIN_SECONDS
                if not pipes or now >= drain_until:
                    return timed_out, False
                wait = drain_until - now
            elif deadline is not None:
                if now >= deadline:
                    child.kill_group()
                    timed_out, deadline = True, None
                    continue
                wait = deadline - now
            for key, _ in sel.select(wait):
                tag = key.data
                if tag == _EXIT:
                    sel.unregister(key.fd)
                elif tag == _CLIENT:
                    if not _client_alive(conn):
                        if child.exit_code is None:
                            child.kill_group()
                        return timed_out, True
                else:
                    data = os.read(key.fd, CHUNK)
                    if data:
                        conn.send(tag, data)
                    else:
                        sel.unregister(key.fd)
                        del pipes[key.fd]
    finally:
        sel.close()


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
    conn.ok(pid=None)
    conn.send(STDERR, f"{name}: {reason}\n".encode())
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


def _credentials(who: Identity) -> dict[str, Any]:
    if os.geteuid() == 0:
        return {"user": who.uid, "group": who.gid, "extra_groups": who.groups}
    if who.uid != os.geteuid():
        raise errors.PermissionDenied(
            f"the agent does not run as root and cannot become {who.name}"
        )
    return {}


def _stdin(raw: object) -> int:
    """A file descriptor holding the whole input: a memfd, so feeding a command
    that does not read its stdin can never block the output loop."""
    if raw is None:
        return subprocess.DEVNULL
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
