"""Background processes: started by ``start``, outliving every connection.

Each one gets a directory of its own, ``<JOBS_DIR>/<pid>/``:

* ``output``: everything it wrote, as the wire format's own ``O``/``E`` frames
  in the order they came (one file keeps the interleaving of the two streams),
  plus a ``J`` frame ``{"event": "truncated", "stream": ...}`` where a stream
  hit its cap. Offsets count output bytes only, both streams together.
* ``meta.json``: what ``jobs`` reports, rewritten when the process ends.

Each stream keeps its first ``max_output`` bytes; the rest is not stored and
``truncated`` says so. The head rather than the tail: it never moves, so
offsets stay valid for every reader. What comes past the cap still reaches the
readers following live, through a window of ``LIVE_WINDOW`` bytes in memory: a
reader that falls further behind loses chunks (and gets a ``truncated``
marker), except the holder of a foreground process, which the process waits
for (its writes block, as on any pipe) so that its one stream loses nothing.

A pump thread per process copies its pipes into the file and waits for its exit
status, which the reaper hands over like any other child's. Finished processes
stay listed for ``RETAIN_SECONDS``; pruning happens on the next operation. The
directory lives only as long as this agent: a new agent (a restarted sandbox)
starts with an empty one.

Imported on the first background operation only: ``threading`` is no cost to
the agent's start.
"""

from __future__ import annotations

import _thread
import os
import select
import shutil
import threading
import time
from collections import deque

from sandbank.agent import reaper
from sandbank.agent.base import os_error
from sandbank.agent.conn import errors, log, suppress
from sandbank.protocol.agent import CHUNK, HEADER, STDERR, STDOUT, encode, encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.reaper import Child

#: Where the output lives: root's, outside the sealed socket directory. Tests
#: point it elsewhere.
JOBS_DIR_ENV = "SANDBANK_AGENT_JOBS_DIR"
JOBS_DIR = "/run/sandbank-jobs"
#: Bytes kept of each stream of one process, unless ``start`` asks for fewer.
MAX_OUTPUT = 16 * 1024 * 1024
#: How long a finished process stays listed, attachable and waitable.
RETAIN_SECONDS = 600.0
#: As ``exec``: after the exit, how long output still held open by its own
#: background children is copied before the record is closed.
DRAIN_SECONDS = 0.1
#: Output past the cap kept in memory for live readers.
LIVE_WINDOW = 8 * 1024 * 1024
#: How often a pump held up by a foreground reader looks again.
HOLD_CHECK_SECONDS = 0.25

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class Job:
    """One background process. ``cond`` guards everything that changes; readers
    wait on it for more output or the exit."""

    def __init__(
        self, child: Child, spec: dict[str, Any], directory: str, cap: int, stdin_w: int | None
    ) -> None:
        self.child = child
        self.pid = child.pid
        self.spec = spec
        self.directory = directory
        self.cap = cap
        self.cond = threading.Condition()
        self.started_at = time.time()
        self.ended_at: float | None = None
        #: Bytes of ``output`` that hold whole frames: what readers may read.
        self.written = 0
        #: Output bytes stored, both streams: the offset of the next chunk.
        self.offset = 0
        self.stored = {STDOUT: 0, STDERR: 0}
        self.truncated: list[str] = []
        self.timed_out = False
        self.finished = False
        self.stdin_w = stdin_w
        self.stdin_lock = threading.Lock()
        self.stdin_mode = spec["stdin"]
        #: Output past the cap, ``(seq, kind, data)``, for live readers.
        self.live: deque[tuple[int, bytes, bytes]] = deque()
        self.live_next = 0
        self.live_size = 0
        #: The next live chunk the foreground reader needs; None: nobody holds it.
        self.hold_seq: int | None = 0 if spec.get("kind") == "foreground" else None
        #: The output file while the pump copies into it.
        self._out = -1
        #: When the timeout kills it (``time.monotonic``), also while the pump waits.
        self.deadline: float | None = None

    @property
    def output_path(self) -> str:
        return os.path.join(self.directory, "output")

    def info(self) -> dict[str, Any]:
        child = self.child
        return {
            "pid": self.pid,
            "tag": self.spec["tag"],
            "cmd": self.spec["cmd"],
            "cwd": self.spec["cwd"],
            "env_keys": self.spec["env_keys"],
            "env": self.spec.get("env") or {},
            "kind": self.spec.get("kind", "background"),
            "user": self.spec["user"],
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "running": not self.finished,
            "exit_code": child.exit_code if self.finished else None,
            "signal": child.signal if self.finished else None,
            "timed_out": self.timed_out,
            "stdin": self.stdin_mode,
            "output_bytes": self.offset,
            "truncated": list(self.truncated),
        }

    def deliver(self, signo: int) -> None:
        """Signal the process's group (raises ProcessLookupError once it is gone)."""
        os.killpg(self.pid, signo)

    def exit_error(self, what: str) -> errors.SandbankError:
        """409 for an operation that needs a running process."""
        code = self.child.exit_code
        return errors.Conflict(
            f"process {self.pid} has already exited with code {code}: cannot {what}",
            pid=self.pid, exit_code=code, signal=self.child.signal,
        )  # fmt: skip

    # -- the pump ------------------------------------------------------------------

    def pump(self, timeout: float | None) -> None:
        # The first record is written here rather than before the start is
        # answered: nothing reads it back then, and a streamed command's first
        # output should not wait for a file write and rename.
        _write_meta(self)
        try:
            self._pump(timeout)
        except Exception as exc:  # keep the record consistent whatever happened
            log(f"job {self.pid}: output copy failed: {exc!r}")
            self.child.kill_group()
            while self.child.exit_code is None:
                time.sleep(0.05)
        finally:
            self._finish()

    def _pump(self, timeout: float | None) -> None:
        self._out = os.open(self.output_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            self._copy(timeout)
        finally:
            os.close(self._out)

    def _copy(self, timeout: float | None) -> None:
        """Read output as it comes until the process has exited and its output
        is drained (at most ``DRAIN_SECONDS`` more); at ``timeout`` kill it."""
        child = self.child
        sources = set(self._sources())
        deadline = None if timeout is None else child.started + timeout
        self.deadline = deadline
        drain_until: float | None = None
        poller = select.poll()
        for fd in (*sources, child.wake_fd):
            poller.register(fd, select.POLLIN)
        while True:
            now = time.monotonic()
            if child.exit_code is not None:
                if not sources:
                    return
                if drain_until is None:
                    drain_until = now + DRAIN_SECONDS
                if now >= drain_until:
                    return
            if deadline is not None and now >= deadline and child.exit_code is None:
                self.timed_out = True
                self._kill()
                deadline = None
            waits = [t - now for t in (deadline, drain_until) if t is not None]
            wait_ms = None if not waits else max(0, int(min(waits) * 1000) + 1)
            for fd, _ in poller.poll(wait_ms):
                if fd == child.wake_fd:
                    poller.unregister(fd)
                    continue
                if not self._read(fd):
                    poller.unregister(fd)
                    sources.discard(fd)

    def _sources(self) -> tuple[int, ...]:
        return (self.child.stdout, self.child.stderr)

    def _read(self, fd: int) -> bool:
        """Take what ``fd`` has; False once it is at its end."""
        data = os.read(fd, CHUNK)
        if data:
            self._store(self._out, STDOUT if fd == self.child.stdout else STDERR, data)
        return bool(data)

    def _kill(self) -> None:
        self.child.kill_group()

    def _store(self, out: int, kind: bytes, data: bytes) -> None:
        room = max(0, self.cap - self.stored[kind])
        record = b""
        if room > 0:
            kept = data[:room]
            record = encode(kind, kept)
        name = "stdout" if kind == STDOUT else "stderr"
        if len(data) > room and name not in self.truncated:
            record += encode_json({"event": "truncated", "stream": name})
            self.truncated.append(name)
        view = memoryview(record)
        while view:
            view = view[os.write(out, view) :]
        rest = data[room:]
        with self.cond:
            self.written += len(record)
            self.stored[kind] += len(data) - len(rest)
            self.offset += len(data) - len(rest)
            if rest:
                self.live.append((self.live_next, kind, rest))
                self.live_next += 1
                self.live_size += len(rest)
                self._trim()
            self.cond.notify_all()

    def _trim(self) -> None:
        """Keep the live window bounded; wait for a foreground reader rather than
        drop what it has not read. Called with ``cond`` held."""
        while self.live_size > LIVE_WINDOW:
            seq, _, chunk = self.live[0]
            if self.hold_seq is not None and seq >= self.hold_seq:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    # A reader that stopped reading does not outlast the timeout.
                    if self.child.exit_code is None:
                        self.timed_out = True
                        self.child.kill_group()
                    self.hold_seq = None
                    continue
                self.cond.wait(HOLD_CHECK_SECONDS)
                continue
            self.live.popleft()
            self.live_size -= len(chunk)

    def _finish(self) -> None:
        self.child.close()
        with self.cond:
            self.finished = True
            self.ended_at = time.time()
            self.cond.notify_all()
        # After the news is out: a ``stdin`` write in progress holds this lock
        # until it sees ``finished``, and nobody waits for the exit meanwhile.
        self.close_stdin()
        _write_meta(self)

    def close_stdin(self) -> None:
        with self.stdin_lock:
            if self.stdin_w is not None:
                os.close(self.stdin_w)
                self.stdin_w = None
                if self.stdin_mode == "open":
                    self.stdin_mode = "closed"


def _write_meta(job: Job) -> None:
    path = os.path.join(job.directory, "meta.json")
    with suppress(OSError):
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, encode_json(job.info())[HEADER.size :])
        finally:
            os.close(fd)
        os.replace(f"{path}.tmp", path)


# -- the registry -----------------------------------------------------------------


class Registry:
    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        # Records left by an earlier agent, whose processes are gone; only what
        # looks like one of ours, in case the directory was pointed elsewhere.
        for name in os.listdir(root):
            if name.isdigit():
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def start(
        self,
        spawn: Any,
        spec: dict[str, Any],
        cap: int,
        timeout: float | None,
        stdin_w: int | None,
        kind: type[Job] = Job,
    ) -> Job:
        """Spawn through the reaper and register before anyone can ask for the pid."""
        self.prune()
        child = reaper.get().spawn(spawn)
        directory = os.path.join(self.root, str(child.pid))
        # Under the lock: a pid can come round again while an old record is still
        # retained, and its pruning must not take the new one's directory along.
        with self._lock:
            try:
                shutil.rmtree(directory, ignore_errors=True)
                os.mkdir(directory, 0o700)
                output = os.path.join(directory, "output")
                os.close(os.open(output, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                child.kill_group()
                _thread_pump_cleanup(child)
                raise os_error(exc) from exc
            job = kind(child, spec, directory, cap, stdin_w)
            self._jobs[job.pid] = job
        # Not threading.Thread().start(), which waits until the new thread runs:
        # on a busy host that wait (for a CPU) came before the start's answer.
        _thread.start_new_thread(job.pump, (timeout,))
        return job

    def get(self, pid: object) -> Job:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise errors.BadRequest("pid must be an integer")
        self.prune()
        with self._lock:
            job = self._jobs.get(pid)
        if job is None:
            raise errors.NotFound(f"no process {pid} was started through the agent", pid=pid)
        return job

    def all(self) -> list[Job]:
        self.prune()
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.started_at)

    def prune(self) -> None:
        cutoff = time.time() - RETAIN_SECONDS
        with self._lock:
            old = [
                job for job in self._jobs.values()
                if job.finished and job.ended_at is not None and job.ended_at < cutoff
            ]  # fmt: skip
            for job in old:
                del self._jobs[job.pid]
                shutil.rmtree(job.directory, ignore_errors=True)
            # A reader that joins now starts past the live window: free it once
            # the readers of the time have had a while to finish.
            for job in self._jobs.values():
                if job.finished and job.live and (job.ended_at or 0) < time.time() - 60:
                    with job.cond:
                        job.live.clear()
                        job.live_size = 0


def _thread_pump_cleanup(child: Child) -> None:
    """A process that got no pump: wait for its status, then free its descriptors."""

    def wait() -> None:
        while child.exit_code is None:
            time.sleep(0.05)
        child.close()

    threading.Thread(target=wait, daemon=True).start()


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry(os.environ.get(JOBS_DIR_ENV) or JOBS_DIR)
        return _registry
