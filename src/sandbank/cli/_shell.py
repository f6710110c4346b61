"""``sandbank shell ID``: an interactive terminal in a sandbox.

From a real terminal the local one goes into raw mode, so every key (Ctrl-C
included) goes to the sandbox rather than to this process; the window size
follows SIGWINCH; the local terminal is restored however the session ends; and
the shell's exit code becomes this command's. The terminal itself lives in the
sandbox: ``--pid`` reconnects to one (its recent output is replayed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Annotated

import typer

from sandbank.client._async.pty import AsyncPtyHandle
from sandbank.client._async.sandbox import AsyncSandbox
from sandbank.client.pty_types import PtySize

from ._options import ServerOptions, server_options

#: Bytes read from the local terminal at a time.
READ_SIZE = 65536


def _size(fd: int) -> PtySize:
    try:
        columns, lines = os.get_terminal_size(fd)
    except OSError:
        return PtySize()
    return PtySize(rows=lines or 24, cols=columns or 80)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """Raw mode on a terminal, restored on the way out whatever happens."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _pump(handle: AsyncPtyHandle, stdin: int, stdout: int) -> int:
    """Keys to the sandbox and output back until the shell exits; its exit code."""
    loop = asyncio.get_running_loop()
    # Keys and new sizes, in the order they happened.
    keys: asyncio.Queue[bytes | PtySize] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(stdin, READ_SIZE)
        except OSError:
            data = b""
        if data:
            keys.put_nowait(data)
        else:  # end of input: the shell keeps running until it exits by itself
            loop.remove_reader(stdin)

    async def send_keys() -> None:
        while True:
            item = await keys.get()
            if isinstance(item, PtySize):
                await handle.resize(item)
            else:
                await handle.send_input(item)

    def resized() -> None:
        keys.put_nowait(_size(stdout))

    try:
        loop.add_reader(stdin, readable)
    except PermissionError:  # a regular file or /dev/null: epoll cannot watch it
        while data := os.read(stdin, READ_SIZE):
            keys.put_nowait(data)
    interactive = os.isatty(stdout)
    if interactive:
        loop.add_signal_handler(signal.SIGWINCH, resized)
    sender = loop.create_task(send_keys())
    try:
        async for chunk in handle:
            view = memoryview(chunk)
            while view:
                view = view[os.write(stdout, view) :]
    finally:
        loop.remove_reader(stdin)
        if interactive:
            loop.remove_signal_handler(signal.SIGWINCH)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
    if handle.result is None:
        raise ConnectionError(f"lost the connection to terminal {handle.pid}")
    return handle.result.exit_code


async def _session(
    options: ServerOptions,
    sandbox_id: str,
    pid: int | None,
    cmd: list[str] | None,
    user: str,
    cwd: str | None,
) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sandbox = await AsyncSandbox.connect(
        sandbox_id, api_key=options.resolved_key(), base_url=options.url
    )
    try:
        if pid is None:
            handle = await sandbox.pty.create(_size(stdout), cwd=cwd, user=user, cmd=cmd)
        else:
            handle = await sandbox.pty.connect(pid)
            await handle.resize(_size(stdout))
        try:
            with _raw(stdin):
                return await _pump(handle, stdin, stdout)
        finally:
            await handle.disconnect()
    finally:
        await sandbox.close()


def shell(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    cmd: Annotated[
        list[str] | None, typer.Argument(metavar="[-- CMD...]", help="Instead of a login shell.")
    ] = None,
    pid: Annotated[
        int | None, typer.Option("--pid", help="Reconnect to this running terminal.")
    ] = None,
    user: Annotated[str, typer.Option(help="Run as this user (user or root).")] = "user",
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
) -> None:
    """Open an interactive terminal in a sandbox; exits with the shell's exit code."""
    options = server_options(ctx)
    try:
        code = asyncio.run(_session(options, sandbox_id, pid, cmd or None, user, cwd))
    except ConnectionError as exc:
        typer.echo(f"\r\nerror: sandbox_unavailable: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(shell)
