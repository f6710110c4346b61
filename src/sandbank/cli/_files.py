"""``sandbank files``: watch a directory, find files, change modes and owners."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from sandbank.client.watch import FilesystemEvent

from ._options import server_options

files_app = typer.Typer(help="Files inside a sandbox beyond cp.", no_args_is_help=True)


@files_app.command()
def watch(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    path: Annotated[str, typer.Argument(metavar="PATH")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r")] = False,
) -> None:
    """Print events under a directory as they happen (TYPE NAME), until Ctrl-C
    or until the directory goes away."""
    done = threading.Event()
    failure: list[Exception] = []

    def show(event: FilesystemEvent) -> None:
        suffix = "/" if event.is_dir else ""
        typer.echo(f"{event.type:<7} {event.name}{suffix}")

    def ended(exc: Exception | None) -> None:
        if exc is not None:
            failure.append(exc)
        done.set()

    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        handle = sandbox.files.watch_dir(path, show, recursive=recursive, on_exit=ended)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop()
    if failure:
        raise failure[0]


@files_app.command()
def find(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    path: Annotated[str, typer.Argument(metavar="PATH")],
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="A glob; ** spans dirs.")],
    limit: Annotated[int, typer.Option(help="Most matches; more is an error.")] = 1000,
) -> None:
    """List the paths under PATH that match PATTERN."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        for entry in sandbox.files.find(path, pattern, limit=limit):
            typer.echo(entry.path + ("/" if entry.is_dir else ""))


@files_app.command()
def chmod(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    mode: Annotated[str, typer.Argument(metavar="MODE", help="Octal, e.g. 755.")],
    path: Annotated[str, typer.Argument(metavar="PATH")],
) -> None:
    """Set the permission bits of PATH."""
    try:
        bits = int(mode, 8)
    except ValueError:
        raise typer.BadParameter(f"{mode!r} is not an octal mode", param_hint="MODE") from None
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        entry = sandbox.files.chmod(path, bits)
    typer.echo(f"{entry.permissions} {entry.path}")


def register(app: typer.Typer) -> None:
    app.add_typer(files_app, name="files")
