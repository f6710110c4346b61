"""``start``, ``jobs``, ``attach``, ``wait``, ``stdin``, ``signal``: the operations
on background processes (kept in ``jobs``).

None of them ties a process to its connection: a client that hangs up while
attached or waiting only ends its own operation.
"""

from __future__ import annotations

import binascii
import errno
import os
import select
import time

from sandbank.agent import jobs, processes, spawn
from sandbank.agent.base import identity
from sandbank.agent.conn import Conn, errors, suppress
from sandbank.protocol.agent import CHUNK, HEADER, JSON

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.jobs import Job
    from sandbank.agent.reaper import Spawned

#: How often a reader that waits for output looks whether its client is gone.
CLIENT_CHECK_SECONDS = 0.25
#: Bytes of the output file read at once; more than any frame.
READ_BLOCK = 1024 * 1024
STDIN_MODES = ("none", "bytes", "open")


def start(conn: Conn, req: dict[str, Any]) -> None:
    if req.get("pty") is not None:
        from sandbank.agent import ptys

        ptys.start(conn, req)
        return
    argv = processes._argv(req.get("cmd"))
    who = identity(req.get("user"))
    env = processes._env(req.get("env"), who)
    cwd = processes._cwd(req.get("cwd"), who)
    timeout = _timeout(req.get("timeout"))
    tag = req.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise errors.BadRequest("tag must be a string")
    cap = _cap(req.get("max_output"))
    mode = req.get("stdin") or ("none" if req.get("stdin_b64") is None else "bytes")
    if mode not in STDIN_MODES:
        raise errors.BadRequest(f"stdin must be one of {', '.join(STDIN_MODES)}")
    stdin_w: int | None = None
    if mode == "open":
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    elif mode == "bytes":
        stdin_r = processes._stdin(req.get("stdin_b64") or "")
    else:
        stdin_r = processes._stdin(None)

    def begin() -> Spawned:
        return spawn.spawn(argv, env, cwd, who, stdin_r)

    foreground = req.get("foreground") is True
    spec = {
        "cmd": argv, "cwd": cwd, "user": who.name, "tag": tag,
        "env_keys": sorted(env), "stdin": mode,
        "env": _shown_env(req.get("show_env"), env),
        "kind": "foreground" if foreground else "background",
    }  # fmt: skip
    try:
        job = jobs.registry().start(begin, spec, cap, timeout, stdin_w)
    except OSError as exc:
        if stdin_w is not None:
            os.close(stdin_w)
        if exc.filename == cwd:
            raise
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        raise errors.BadRequest(
            f"cannot run {argv[0]}: {exc.strerror or exc}", exit_code=code
        ) from None
    except BaseException:
        if stdin_w is not None:
            os.close(stdin_w)
        raise
    finally:
        os.close(stdin_r)
    if not foreground:
        conn.ok(pid=job.pid, tag=tag, job=job.info())
        return
    try:
        conn.ok(pid=job.pid, tag=tag, job=job.info())
    finally:
        _hold(conn, job)  # also when the answer could not be sent: it kills then


def _hold(conn: Conn, job: Job) -> None:
    """A foreground process: its output follows on this connection, and a client
    that hangs up before the exit (or a server that dies) takes it along."""
    fd = os.open(job.output_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _replay(conn, job, fd, 0, True, hold=True)
    except OSError:
        pass  # the client is gone mid-send
    finally:
        os.close(fd)
        with job.cond:
            job.hold_seq = None
            job.cond.notify_all()
            if not job.finished:
                job.child.kill_group()


def _shown_env(raw: object, env: dict[str, str]) -> dict[str, str]:
    """The variables ``jobs`` reports with their values: those given with the
    command. The sandbox's own (which may hold secrets) are listed by name only."""
    if raw is None:
        return {}
    if not isinstance(raw, list) or not all(isinstance(key, str) for key in raw):
        raise errors.BadRequest("show_env must be a list of variable names")
    return {key: env[key] for key in raw if key in env}


def list_jobs(conn: Conn, req: dict[str, Any]) -> None:
    conn.ok(jobs=[job.info() for job in jobs.registry().all()])


def attach(conn: Conn, req: dict[str, Any]) -> None:
    """Replay the output from ``offset``, then (``follow``) live output, then the
    exit: ``J{"event": "exit", ...info}``. Without ``follow`` a running process
    ends the stream with ``J{"event": "more", "offset": N}``."""
    job = jobs.registry().get(req.get("pid"))
    offset = req.get("offset") or 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise errors.BadRequest("offset must be a non-negative integer")
    follow = req.get("follow", True) is not False
    if job.spec.get("pty"):
        from sandbank.agent import ptys

        conn.ok(pid=job.pid, job=job.info())
        ptys.replay(conn, job, offset, follow)  # type: ignore[arg-type]
        return
    fd = os.open(job.output_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        conn.ok(pid=job.pid, job=job.info())
        _replay(conn, job, fd, offset, follow)
    finally:
        os.close(fd)


def _replay(conn: Conn, job: Job, fd: int, want: int, follow: bool, hold: bool = False) -> None:
    """Stored output from ``want``, then (``follow``) live output, including what
    comes past the cap (from the window in memory), then the exit. A ``hold``
    reader advances ``job.hold_seq``, which a pump past the cap waits for."""
    pos = 0  # in the file
    at = 0  # in the output, both streams
    with job.cond:
        # Live output from now on; a foreground reader from the first chunk the
        # pump kept for it (the process may have run past its cap already).
        cursor = job.hold_seq if hold and job.hold_seq is not None else job.live_next
    while True:
        with job.cond:
            while follow and pos == job.written and cursor == job.live_next and not job.finished:
                job.cond.wait(CLIENT_CHECK_SECONDS)
                if pos == job.written and not _client_alive(conn):
                    return
            written, finished = job.written, job.finished
            fresh = [chunk for chunk in job.live if chunk[0] >= cursor] if follow else []
            lost = (fresh[0][0] if fresh else job.live_next) > cursor if follow else False
            cursor = job.live_next if follow else cursor
        while pos < written:
            pos, at = _send_stored(conn, fd, pos, written, at, want)
        if lost:
            conn.send_json({"event": "truncated", "stream": "live"})
        for _, kind, data in fresh:
            conn.send(kind, data)
        if hold and fresh:
            with job.cond:
                job.hold_seq = cursor
                job.cond.notify_all()
        if finished:
            conn.send_json({"event": "exit", **job.info()})
            return
        if not follow:
            conn.send_json({"event": "more", "offset": max(at, want)})
            return


def _send_stored(
    conn: Conn, fd: int, pos: int, written: int, at: int, want: int
) -> tuple[int, int]:
    """Send the whole frames of one block of the file from ``pos``, output from
    ``want`` on; consecutive chunks of a stream go out as one frame (a busy
    process writes many small ones). Returns the new ``pos`` and ``at``."""
    _, first = HEADER.unpack(os.pread(fd, HEADER.size, pos))
    span = min(written - pos, max(READ_BLOCK, HEADER.size + first))
    block = memoryview(os.pread(fd, span, pos))
    i = 0
    kind_out = b""
    parts: list[memoryview] = []
    size = 0
    while i + HEADER.size <= len(block):
        kind, length = HEADER.unpack_from(block, i)
        if i + HEADER.size + length > len(block):
            break  # the rest of this frame is in the next block
        payload = block[i + HEADER.size : i + HEADER.size + length]
        i += HEADER.size + length
        if kind == JSON:
            if at >= want:
                if parts:
                    conn.send(kind_out, b"".join(parts))
                    parts, size = [], 0
                conn.send(JSON, bytes(payload))
            continue
        if at + length > want:
            piece = payload[max(0, want - at) :]
            if parts and (kind != kind_out or size + len(piece) > CHUNK):
                conn.send(kind_out, b"".join(parts))
                parts, size = [], 0
            kind_out = kind
            parts.append(piece)
            size += len(piece)
        at += length
    if parts:
        conn.send(kind_out, b"".join(parts))
    return pos + i, at


def wait(conn: Conn, req: dict[str, Any]) -> None:
    job = jobs.registry().get(req.get("pid"))
    timeout = _timeout(req.get("timeout"))
    deadline = None if timeout is None else time.monotonic() + timeout
    with job.cond:
        while not job.finished:
            left = CLIENT_CHECK_SECONDS
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    raise errors.Timeout(
                        f"process {job.pid} is still running after {timeout:g}s", pid=job.pid
                    )
            job.cond.wait(left)
            if not job.finished and not _client_alive(conn):
                return
    conn.ok(job=job.info())


def stdin(conn: Conn, req: dict[str, Any]) -> None:
    job = jobs.registry().get(req.get("pid"))
    raw = req.get("data_b64") or ""
    if not isinstance(raw, str):
        raise errors.BadRequest("data_b64 must be a base64 string")
    try:
        data = binascii.a2b_base64(raw)
    except binascii.Error as exc:
        raise errors.BadRequest(f"data_b64 is not valid base64: {exc}") from None
    with job.stdin_lock:
        if job.finished:
            raise job.exit_error("write to its stdin")
        if job.stdin_w is None:
            state = "was closed" if job.stdin_mode == "closed" else "was not opened"
            raise errors.Conflict(
                f"the stdin of process {job.pid} {state}", pid=job.pid, stdin=job.stdin_mode
            )
        try:
            if not _write_all(conn, job, job.stdin_w, data):
                return
        except BrokenPipeError:
            raise errors.Conflict(
                f"process {job.pid} no longer reads its stdin (it is exiting)", pid=job.pid
            ) from None
    # A terminal's input never closes: ^D (b"\x04") is its end of file.
    if req.get("close") is True and job.stdin_mode != "pty":
        job.close_stdin()
    conn.ok(pid=job.pid, written=len(data))


def _write_all(conn: Conn, job: Job, fd: int, data: bytes) -> bool:
    """Write to the pipe without ever blocking on it for good: a process that
    does not read leaves the client waiting, and a client that gives up (hangs
    up) or the end of the process ends the write. False when the client went away."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.register(conn.sock.fileno(), select.POLLIN)
    os.set_blocking(fd, False)
    try:
        while view:
            try:
                view = view[os.write(fd, view[:CHUNK]) :]
                continue
            except BlockingIOError:
                pass
            for ready, _ in poller.poll(CLIENT_CHECK_SECONDS * 1000):
                if ready == conn.sock.fileno() and not _client_alive(conn):
                    return False
            if job.finished:
                raise job.exit_error("write the rest of the input")
    finally:
        os.set_blocking(fd, True)
    return True


def send_signal(conn: Conn, req: dict[str, Any]) -> None:
    job = jobs.registry().get(req.get("pid"))
    signo = _signal_number(req.get("signal"))
    with job.cond:
        if job.finished or job.child.exit_code is not None:
            raise job.exit_error("signal it")
        try:
            job.deliver(signo)
        except ProcessLookupError:
            raise job.exit_error("signal it") from None
    conn.ok(pid=job.pid, signal=signo)


def resize(conn: Conn, req: dict[str, Any]) -> None:
    from sandbank.agent import ptys

    ptys.resize(conn, req)


def _signal_number(raw: object) -> int:
    import signal

    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 < raw < signal.NSIG:
            return raw
    elif isinstance(raw, str) and raw:
        name = raw.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        with suppress(KeyError):
            return int(signal.Signals[name])
        if raw.isdigit() and 0 < int(raw) < signal.NSIG:
            return int(raw)
    raise errors.BadRequest(f"unknown signal {raw!r}")


def _timeout(raw: object) -> float | None:
    """Seconds; 0 or null is none."""
    if raw is None or raw == 0:
        return None
    return processes._timeout(raw)


def _cap(raw: object) -> int:
    if raw is None:
        return jobs.MAX_OUTPUT
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise errors.BadRequest("max_output must be a non-negative number of bytes")
    return raw  # the server bounds it


def _client_alive(conn: Conn) -> bool:
    """The client sends nothing after its request: readable means it hung up."""
    poller = select.poll()  # not select(): the agent's descriptors may pass 1024
    poller.register(conn.sock.fileno(), select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        return bool(conn.sock.recv(4096))
    except OSError:
        return False
