"""The one way the runtime spawns host processes.

Always an argv list (never a shell), always an explicit environment (the
server's own environment — tokens, proxies, ``LD_PRELOAD`` — must not leak into
``runc``, ``mount`` or a chroot), always a timeout, and a failure always becomes
``RuntimeFailure`` carrying the command and the tail of its stderr so the
operator sees *why* without digging through logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbank.errors import RuntimeFailure

#: The environment every host command gets unless the caller passes one.
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}

#: How much of stderr an error message carries.
TAIL_BYTES = 2000


@dataclass(frozen=True)
class ProcResult:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def tail(data: bytes, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes as text, cut at a line start where possible."""
    if len(data) > limit:
        data = data[-limit:]
        cut = data.find(b"\n")
        if 0 <= cut < limit // 2:
            data = data[cut + 1 :]
    return data.decode(errors="replace").strip()


def describe(argv: Sequence[str]) -> str:
    return " ".join(argv)


async def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    check: bool = True,
    stdin: bytes | None = None,
    stdin_fd: int | None = None,
    output: IO[bytes] | None = None,
    new_session: bool = False,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ProcResult:
    """Run ``argv`` to completion.

    ``stdin_fd``: an open descriptor to give the process as its stdin.
    ``output``: an open file that receives both stdout and stderr instead of
    pipes; used for processes that outlive the call (``runc run -d`` hands its
    stdio to the container, and a pipe would then never reach EOF).
    ``new_session``: detach from the server's session so a terminal's Ctrl-C
    aimed at the server never reaches what we start; on timeout or
    cancellation the whole process group is killed.
    ``on_line``: called with each line of output (stderr merged into stdout)
    as it appears, for progress displays of long commands.
    """
    args = [os.fspath(a) for a in argv]
    if on_line is not None and (stdin is not None or output is not None):
        raise ValueError("on_line reads the output itself: no stdin or output with it")
    if stdin is not None and stdin_fd is not None:
        raise ValueError("stdin is either bytes or a descriptor, not both")
    started = time.monotonic()
    pipe, merged = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=pipe if stdin is not None else (
                asyncio.subprocess.DEVNULL if stdin_fd is None else stdin_fd
            ),
            stdout=output if output is not None else pipe,
            stderr=output if output is not None else (merged if on_line else pipe),
            env=dict(BASE_ENV if env is None else env),
            start_new_session=new_session,
            cwd=cwd,
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot run {args[0]}: {exc}", command=describe(args)) from exc
    try:
        if on_line is not None:
            out, err = await asyncio.wait_for(_stream(proc, on_line), timeout), b""
        else:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        _kill(proc, new_session)
        # Reap it so no zombie is left behind; it was just SIGKILLed.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise RuntimeFailure(
            f"{describe(args)} timed out after {timeout:g}s", command=describe(args)
        ) from None
    except asyncio.CancelledError:
        _kill(proc, new_session)
        raise
    result = ProcResult(
        argv=args,
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out or b"",
        stderr=err or b"",
        seconds=time.monotonic() - started,
    )
    if check and result.returncode != 0:
        raise failure(result)
    return result


def _kill(proc: asyncio.subprocess.Process, group: bool) -> None:
    """SIGKILL the process, or its whole session's process group (debootstrap's
    dpkg children, for one) when it was started in a session of its own."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


async def _stream(proc: asyncio.subprocess.Process, on_line: Callable[[str], None]) -> bytes:
    """Forward output line by line; keep only a tail for error messages."""
    assert proc.stdout is not None
    kept = bytearray()
    while line := await proc.stdout.readline():
        kept += line
        del kept[: max(0, len(kept) - 64 * 1024)]
        with contextlib.suppress(Exception):
            on_line(line.decode(errors="replace").rstrip())
    await proc.wait()
    return bytes(kept)


def failure(result: ProcResult, what: str | None = None) -> RuntimeFailure:
    """The error for a command that exited non-zero."""
    detail = tail(result.stderr) or tail(result.stdout)
    head = what or describe(result.argv)
    msg = f"{head} failed with exit code {result.returncode}"
    if detail:
        msg += f": {detail}"
    return RuntimeFailure(msg, command=describe(result.argv), exit_code=result.returncode)
