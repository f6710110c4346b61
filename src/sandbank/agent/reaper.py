"""Reaping: as PID 1 the agent must ``wait`` for every process that dies in the
sandbox, its own children and every orphan the kernel reparents to it.

One thread blocks in ``waitpid(-1)`` and hands each exit status to the process
the agent spawned with that pid; statuses of orphans are simply dropped. Nothing
else may wait: a second waiter (``Popen.wait``) would steal statuses from this
one, so a spawned process's exit is read from its ``Child`` only.

Spawning and registering happen under the lock the reaper takes before handing a
status out, so a process that exits before ``Popen`` even returns is still
matched to its ``Child``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from sandbank.agent.base import log

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


class Child:
    """A process the agent spawned. ``wake_fd`` turns readable once its exit status
    is known, so an exec loop can wait for it in the same ``select`` as its pipes."""

    __slots__ = ("_done", "_wake_w", "ended", "exit_code", "pid", "popen", "started", "wake_fd")

    def __init__(
        self, popen: subprocess.Popen[bytes], started: float, wake: tuple[int, int]
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.started = started
        self.ended: float | None = None
        self.exit_code: int | None = None
        self._done = threading.Event()
        # The reaper owns the write end and the exec loop the read end, so neither
        # ever touches a descriptor number the other has closed and the kernel reused.
        self.wake_fd, self._wake_w = wake

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.exit_code

    def kill_group(self, signo: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the child leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signo)

    def close(self) -> None:
        """Release the exec loop's end; call once nothing selects on ``wake_fd``."""
        os.close(self.wake_fd)

    def _exited(self, code: int) -> None:
        self.exit_code = code
        self.ended = time.monotonic()
        # Popen must never wait on its own: that is what keeps its pid-reuse
        # prone cleanup (subprocess._active) away from our statuses.
        self.popen.returncode = code
        self._done.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        os.close(self._wake_w)


class Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[int, Child] = {}
        self._spawned = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def spawn(self, start: Callable[[], subprocess.Popen[bytes]]) -> Child:
        """Run ``start`` (a Popen call) and track the process it returns."""
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
        self._spawned.set()
        return child

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def _run(self) -> None:
        while True:
            self._spawned.clear()
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self._spawned.wait(IDLE_POLL_SECONDS)
                continue
            except Exception as exc:  # keep reaping whatever happens: PID 1 must not stop
                log(f"reaper: waitpid failed: {exc!r}")
                time.sleep(0.1)
                continue
            with self._lock:
                child = self._children.pop(pid, None)
            if child is not None:
                child._exited(exit_code(status))
