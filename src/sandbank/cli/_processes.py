"""``sandbank ps`` and ``sandbank logs``: background processes of a sandbox."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TextIO

import typer

from sandbank.client import ProcessInfo
from sandbank.client._sync.process import event_bytes

from . import _render
from ._options import server_options


def echo_to(stream: TextIO) -> Callable[[str], None]:
    """An output handler that prints each chunk at once."""

    def echo(text: str) -> None:
        stream.write(text)
        stream.flush()

    return echo


def _state(info: ProcessInfo) -> str:
    if info.running:
        return "running"
    if info.timed_out:
        return "timed out"
    if info.signal is not None:
        return f"killed (signal {info.signal})"
    return f"exited {info.exit_code}"


def _table(infos: list[ProcessInfo]) -> None:
    table = _render._table("PID", "TAG", "KIND", "STATE", "USER", "STARTED", "COMMAND")
    for info in infos:
        table.add_row(
            str(info.pid),
            info.tag or "-",
            info.kind,
            _state(info),
            info.user,
            _render._when(info.started_at),
            " ".join(info.cmd),
        )
    _render._console.print(table)


def ps(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    running: Annotated[bool, typer.Option("--running", help="Only running processes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a sandbox's processes: background ones and streamed commands while
    they run (ended ones stay 10 minutes)."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        infos = sandbox.commands.list(running=True if running else None)
    if as_json:
        _render.print_json([info.to_dict() for info in infos])
    else:
        _table(infos)


def logs(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    pid: Annotated[int, typer.Argument(metavar="PID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until it exits.")
    ] = False,
    offset: Annotated[int, typer.Option(help="Skip this many bytes of output.")] = 0,
) -> None:
    """Print a process's output (stdout and stderr to their own streams)."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        handle = sandbox.commands.connect(pid)
        for event in handle.output(offset=offset, follow=follow):
            kind = event.get("type")
            if kind in ("stdout", "stderr"):
                out = sys.stdout if kind == "stdout" else sys.stderr
                out.buffer.write(event_bytes(event))
                out.flush()
            elif kind == "truncated":
                typer.echo(f"[{event.get('stream')} truncated: output cap reached]", err=True)


def register(app: typer.Typer) -> None:
    app.command()(ps)
    app.command()(logs)
