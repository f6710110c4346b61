"""``sandbank hibernate``, ``wake`` and ``fork`` (see docs/checkpoints.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import _render
from ._options import server_options

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SandboxIdArg = Annotated[str, typer.Argument(metavar="ID")]


def hibernate(ctx: typer.Context, sandbox_id: SandboxIdArg, as_json: JsonFlag = False) -> None:
    """Save a sandbox's processes and memory to disk and stop it until woken."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.hibernate()
    _render.sandbox_or_json(details, as_json)


def wake(ctx: typer.Context, sandbox_id: SandboxIdArg, as_json: JsonFlag = False) -> None:
    """Restore a hibernated sandbox where it left off."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.wake()
    _render.sandbox_or_json(details, as_json)


def fork(
    ctx: typer.Context,
    sandbox_id: SandboxIdArg,
    count: Annotated[int, typer.Option("--count", "-n", help="How many copies.")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Copy a running sandbox (processes, memory, files) into COUNT new ones."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        copies = sandbox.fork(count)
        infos = [c.info for c in copies]
    if as_json:
        _render.print_json([i.to_dict() for i in infos])
    else:
        _render.sandboxes(infos)


def register(app: typer.Typer) -> None:
    for command in (hibernate, wake, fork):
        app.command()(command)
