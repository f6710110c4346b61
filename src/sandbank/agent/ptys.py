"""Terminals: background processes (``jobs``) whose stdio is a pseudo-terminal.

``start`` with ``pty: {cols, rows}`` lands here. Everything else is the job
machinery: the pid, ``jobs``, ``wait``, ``stdin`` (writes go to the master, so
the line discipline echoes and turns ``^C`` into SIGINT), ``attach``. A pty
differs from a pipe job in three ways:

* one output stream (``O`` frames), kept as a ring of the last ``RING_BYTES``
  rather than the head: a terminal lives long and what matters on reconnect is
  what it shows now. Offsets stay absolute; a reader that asks for bytes the
  ring has dropped gets ``J{"event": "truncated", "stream": "pty", "offset": N}``
  and goes on from ``N``.
* ``resize`` {pid, cols, rows} sets the window size (TIOCSWINSZ; the kernel
  sends SIGWINCH to the foreground process group).
* ``signal`` goes to every process of the terminal's session, not only the
  shell's group: a shell puts each of its jobs in a group of its own.

The process leads a new session with the pty's slave as its controlling
terminal: ``posix_spawn`` calls ``setsid`` before its file actions, and opening
a terminal (without ``O_NOCTTY``) as a session leader that has none makes it
the controlling one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios

from sandbank.agent import jobs, processes, spawn
from sandbank.agent.base import identity
from sandbank.agent.conn import Conn, errors, suppress
from sandbank.agent.reaper import Spawned
from sandbank.protocol.agent import CHUNK, STDOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.base import Identity
    from sandbank.agent.reaper import Child

#: Output kept per terminal for replay: the last this many bytes.
RING_BYTES = 512 * 1024
#: Terminals running at once in one sandbox; one more is ``quota_exceeded``.
MAX_RUNNING = 32
#: The window size's bounds (the kernel's field is 16 bits).
MAX_SIZE = 65535
DEFAULT_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_WINSIZE = struct.Struct("HHHH")


def check_size(cols: object, rows: object) -> tuple[int, int]:
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
            raise errors.BadRequest(f"{name} must be an integer from 1 to {MAX_SIZE}")
    return cols, rows  # type: ignore[return-value]


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, cols, 0, 0))


def login_shell(who: Identity, env: dict[str, str]) -> list[str]:
    """The user's shell from the sandbox's passwd, as a login shell."""
    import pwd

    shell = ""
    with suppress(KeyError):
        shell = pwd.getpwnam(who.name).pw_shell
    for candidate in (shell, env.get("SHELL", ""), "/bin/bash", "/bin/sh"):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate, "-l"]
    raise errors.BadRequest("no shell to start: give cmd", exit_code=127)


class PtyJob(jobs.Job):
    def __init__(
        self, child: Child, spec: dict[str, Any], directory: str, cap: int, stdin_w: int | None
    ) -> None:
        super().__init__(child, spec, directory, cap, stdin_w)
        self.ring = bytearray()
        #: The offset of ``ring[0]``; ``offset`` is that of its end.
        self.base = 0

    def info(self) -> dict[str, Any]:
        cols, rows = self.spec["pty"]
        return {**super().info(), "pty": {"cols": cols, "rows": rows}}

    def _pump(self, timeout: float | None) -> None:
        self._copy(timeout)  # into the ring: no output file

    def _sources(self) -> tuple[int, ...]:
        return (self.child.stdout,)  # the terminal's master side

    def _read(self, fd: int) -> bool:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:  # a ``stdin`` write set the shared description non-blocking
            return True
        except OSError as exc:
            # EIO: no process holds the slave open any more.
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self._keep(data)
        return bool(data)

    def _kill(self) -> None:
        self.deliver(9)  # the whole session, not only the shell's group

    def _keep(self, data: bytes) -> None:
        with self.cond:
            self.ring += data
            self.offset += len(data)
            excess = len(self.ring) - RING_BYTES
            if excess > 0:
                del self.ring[:excess]
                self.base += excess
            self.cond.notify_all()

    def resize(self, cols: int, rows: int) -> None:
        with self.stdin_lock:
            if self.finished or self.stdin_w is None:
                raise self.exit_error("resize its terminal")
            set_size(self.stdin_w, cols, rows)
            self.spec["pty"] = [cols, rows]

    def deliver(self, signo: int) -> None:
        """The shell's group, then whatever else still runs in its session."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signo)
        for pid in session_members(self.pid):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signo)


def session_members(sid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            found.append(int(name))
    return found


def _spawn(
    argv: list[str], env: dict[str, str], cwd: str, who: Identity, slave: int
) -> Spawned:
    """Start ``argv`` in a new session with ``slave`` as its terminal and stdio;
    the Spawned's two read ends are duplicates of the master, owned by the caller."""
    path = os.ttyname(slave)
    switch = spawn._switch(who)
    if switch is None:
        import subprocess

        def take_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        popen = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
            start_new_session=True, close_fds=True, preexec_fn=take_terminal,
            user=who.uid, group=who.gid, extra_groups=who.groups,
        )  # fmt: skip
        return Spawned(popen.pid, -1, -1, popen)
    spawn._check(spawn._libc.unshare(spawn.CLONE_FS), "unshare(CLONE_FS)")
    os.chdir(cwd)
    actions: list[Any] = [
        (os.POSIX_SPAWN_OPEN, 0, path, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, 0, 1),
        (os.POSIX_SPAWN_DUP2, 0, 2),
    ]
    with switch:
        pid = spawn._spawn_on_path(argv, env, actions)
    return Spawned(pid, -1, -1)


def start(conn: Conn, req: dict[str, Any]) -> None:
    """``start`` with ``pty``: the job's stdin, stdout and stderr are one terminal."""
    from sandbank.agent import jobops

    size = req.get("pty")
    if not isinstance(size, dict):
        raise errors.BadRequest("pty must be an object {cols, rows}")
    cols, rows = check_size(size.get("cols"), size.get("rows"))
    who = identity(req.get("user"))
    given = req.get("env")
    env = processes._env({**DEFAULT_ENV, **(given if isinstance(given, dict) else {})}, who)
    if given is not None and not isinstance(given, dict):
        raise errors.BadRequest("env must be an object of strings")
    raw_cmd = req.get("cmd")
    argv = login_shell(who, env) if not raw_cmd else processes._argv(raw_cmd)
    cwd = processes._cwd(req.get("cwd"), who)
    timeout = jobops._timeout(req.get("timeout"))
    tag = req.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise errors.BadRequest("tag must be a string")
    registry = jobs.registry()
    running = sum(1 for job in registry.all() if isinstance(job, PtyJob) and not job.finished)
    if running >= MAX_RUNNING:
        raise errors.QuotaExceeded(
            f"{running} terminals are running in this sandbox, the most there may be; "
            "kill one first",
            limit=MAX_RUNNING,
        )
    master, slave = os.openpty()
    fds = [master, slave]
    try:
        set_size(master, cols, rows)
        if os.geteuid() == 0:
            os.fchown(slave, who.uid, -1)
        # The pump reads one duplicate, ``stdin`` and ``resize`` use another:
        # each closes its own when the process ends.
        reader, spare, writer = os.dup(master), os.dup(master), os.dup(master)
        fds += [reader, spare, writer]

        def begin() -> Spawned:
            spawned = _spawn(argv, env, cwd, who, slave)
            # From here on the process's record closes these, whatever follows.
            spawned.stdout, spawned.stderr = reader, spare
            fds.remove(reader)
            fds.remove(spare)
            return spawned

        spec = {
            "cmd": argv, "cwd": cwd, "user": who.name, "tag": tag,
            "env_keys": sorted(env), "stdin": "pty", "pty": [cols, rows],
        }  # fmt: skip
        try:
            job = registry.start(begin, spec, RING_BYTES, timeout, writer, PtyJob)
        except OSError as exc:
            if exc.filename == cwd:
                raise
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            raise errors.BadRequest(
                f"cannot run {argv[0]}: {exc.strerror or exc}", exit_code=code
            ) from None
        fds.remove(writer)  # the job's now
    finally:
        for fd in fds:
            os.close(fd)
    conn.ok(pid=job.pid, tag=tag, job=job.info())


def resize(conn: Conn, req: dict[str, Any]) -> None:
    job = jobs.registry().get(req.get("pid"))
    if not isinstance(job, PtyJob):
        raise errors.Conflict(f"process {job.pid} has no terminal to resize", pid=job.pid)
    cols, rows = check_size(req.get("cols"), req.get("rows"))
    job.resize(cols, rows)
    conn.ok(pid=job.pid, cols=cols, rows=rows)


def replay(conn: Conn, job: PtyJob, want: int, follow: bool) -> None:
    """``attach`` for a terminal: what the ring still holds from ``want``, then
    (``follow``) live output, then the exit."""
    from sandbank.agent.jobops import CLIENT_CHECK_SECONDS, _client_alive

    pos = want
    while True:
        with job.cond:
            while follow and pos >= job.offset and not job.finished:
                job.cond.wait(CLIENT_CHECK_SECONDS)
                if pos >= job.offset and not job.finished and not _client_alive(conn):
                    return
            skipped = pos < job.base
            pos = max(pos, job.base)
            end = job.offset
            chunk = bytes(job.ring[pos - job.base : end - job.base]) if pos < end else b""
            finished = job.finished
        if skipped:
            conn.send_json({"event": "truncated", "stream": "pty", "offset": pos})
        for start_at in range(0, len(chunk), CHUNK):
            conn.send(STDOUT, chunk[start_at : start_at + CHUNK])
        pos += len(chunk)
        if finished and pos >= end:
            conn.send_json({"event": "exit", **job.info()})
            return
        if not follow:
            conn.send_json({"event": "more", "offset": pos})
            return
