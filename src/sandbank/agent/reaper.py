"""Reaping: as PID 1 the agent must ``wait`` for every process that dies in the
sandbox, its own children and every orphan the kernel reparents to it.

One thread blocks in ``waitpid(-1)`` and hands each exit status to the process
the agent spawned with that pid; statuses of orphans are simply dropped. Nothing
else may wait: a second waiter (``Popen.wait``) would steal statuses from this
one, so a spawned process's exit is read from its ``Child`` only.

Spawning and registering happen under the lock the reaper takes before handing a
status out, so a process that exits before the spawn even returns is still
matched to its ``Child``.

Like the server, it uses ``_thread`` rather than ``threading`` (whose import,
with functools and collections, would cost every sandbox's first command ~3 ms).
"""

from __future__ import annotations

import _signal
import _thread
import os
import time

from sandbank.agent.conn import log, suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

#: With no child left, ``waitpid`` fails at once; the reaper then sleeps until the
#: next spawn. Orphans of processes started from outside the agent (``runc exec``)
#: can still land on PID 1 meanwhile, so it also looks again this often.
IDLE_POLL_SECONDS = 1.0


def exit_code(status: int) -> int:
    """The shell's convention: a death by signal N reads as 128+N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Spawned:
    """What starting a command yields: its pid and the read ends of its stdout and
    stderr (the caller's to close), and the Popen object if one started it."""

    __slots__ = ("pid", "popen", "stderr", "stdout")

    def __init__(
        self, pid: int, stdout: int, stderr: int, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid, self.stdout, self.stderr, self.popen = pid, stdout, stderr, popen


class Child:
    """A process the agent spawned. ``wake_fd`` turns readable once its exit status
    is known, so an exec loop can wait for it in the same ``poll`` as its pipes."""

    __slots__ = (
        "_popen", "_wake_w", "ended", "exit_code", "pid", "signal", "started", "stderr", "stdout",
        "wake_fd",
    )  # fmt: skip

    def __init__(self, spawned: Spawned, started: float, wake: tuple[int, int]) -> None:
        self.pid = spawned.pid
        self.stdout, self.stderr = spawned.stdout, spawned.stderr
        self._popen = spawned.popen
        self.started = started
        self.ended: float | None = None
        self.exit_code: int | None = None
        #: The signal that killed it, if one did: 128+N alone cannot tell that
        #: from an ``exit(128+N)``.
        self.signal: int | None = None
        # The reaper owns the write end and the exec loop the read end, so neither
        # ever touches a descriptor number the other has closed and the kernel reused.
        self.wake_fd, self._wake_w = wake

    def kill_group(self, signo: int = _signal.SIGKILL) -> None:
        """Signal the whole process group (the child leads its own session)."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signo)

    def close(self) -> None:
        """Release the exec loop's descriptors; call once nothing polls them."""
        for fd in (self.wake_fd, self.stdout, self.stderr):
            os.close(fd)

    def _exited(self, code: int) -> None:
        self.exit_code = code
        self.ended = time.monotonic()
        if self._popen is not None:
            # Popen must never wait on its own: that is what keeps its pid-reuse
            # prone cleanup (subprocess._active) away from our statuses.
            self._popen.returncode = code
        with suppress(OSError):
            os.write(self._wake_w, b"x")
        os.close(self._wake_w)


class Reaper:
    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._children: dict[int, Child] = {}
        # Released by a spawn to wake a reaper that found no child to wait for.
        self._spawned = _thread.allocate_lock()
        self._spawned.acquire()

    def start(self) -> None:
        _thread.start_new_thread(self._run, ())

    def spawn(self, start: Callable[[], Spawned]) -> Child:
        """Run ``start`` and track the process it starts."""
        wake = os.pipe2(os.O_CLOEXEC)
        try:
            with self._lock:
                started = time.monotonic()
                child = Child(start(), started, wake)
                self._children[child.pid] = child
        except BaseException:
            os.close(wake[0])
            os.close(wake[1])
            raise
        if self._spawned.locked():
            with suppress(RuntimeError):  # a concurrent spawn released it first
                self._spawned.release()
        return child

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def _run(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # A spawn since (or before) this wakes it at once, at worst for
                # one more round.
                self._spawned.acquire(timeout=IDLE_POLL_SECONDS)
                continue
            except Exception as exc:  # keep reaping whatever happens: PID 1 must not stop
                log(f"reaper: waitpid failed: {exc!r}")
                time.sleep(0.1)
                continue
            with self._lock:
                child = self._children.pop(pid, None)
            if child is not None:
                if os.WIFSIGNALED(status):
                    child.signal = os.WTERMSIG(status)
                child._exited(exit_code(status))


_instance: Reaper | None = None
_instance_lock = _thread.allocate_lock()


def get() -> Reaper:
    """The agent's reaper, started on first use: by the warm-up after the agent's
    first answer, or by a first command that comes sooner. Before either, nothing
    in the sandbox but the agent can have been started by it, so nothing waits."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Reaper()
            _instance.start()
        return _instance


def started() -> Reaper | None:
    return _instance
