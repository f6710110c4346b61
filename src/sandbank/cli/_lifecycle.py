"""``sandbank stop|start|restart|update|snapshot|restore`` and ``sandbank snapshots``."""

from __future__ import annotations

from typing import Annotated

import typer

from sandbank.client import SnapshotInfo, Snapshots

from . import _render
from ._options import server_options

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Id = Annotated[str, typer.Argument(metavar="ID")]

snapshots_app = typer.Typer(help="Snapshots of sandboxes' disks.", no_args_is_help=True)


def _snapshots(ctx: typer.Context) -> Snapshots:
    options = server_options(ctx)
    return Snapshots(api_key=options.resolved_key(), base_url=options.url)


def _snapshot_table(items: list[SnapshotInfo]) -> None:
    table = _render._table("ID", "NAME", "SANDBOX", "TEMPLATE", "SIZE", "MEMORY", "CREATED")
    for item in items:
        table.add_row(
            item.id,
            item.name,
            item.sandbox_id,
            item.template,
            _render._bytes(item.size_bytes),
            "yes" if item.memory else "",
            f"{_render._when(item.created_at)} UTC",
        )
    _render._console.print(table)


def _snapshot_out(items: list[SnapshotInfo], as_json: bool, single: bool = False) -> None:
    if as_json:
        _render.print_json(items[0].to_dict() if single else [i.to_dict() for i in items])
    else:
        _snapshot_table(items)


def stop(ctx: typer.Context, sandbox_id: Id, as_json: JsonFlag = False) -> None:
    """Stop a sandbox: processes end, memory and CPU are freed, the disk is kept."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.stop()
    _render.sandbox_or_json(details, as_json)


def start(ctx: typer.Context, sandbox_id: Id, as_json: JsonFlag = False) -> None:
    """Start a stopped sandbox on its disk (processes begin from scratch)."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.start()
    _render.sandbox_or_json(details, as_json)


def restart(ctx: typer.Context, sandbox_id: Id, as_json: JsonFlag = False) -> None:
    """Stop and start a sandbox."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.restart()
    _render.sandbox_or_json(details, as_json)


def update(
    ctx: typer.Context,
    sandbox_id: Id,
    vcpu: Annotated[float | None, typer.Option(help="Virtual CPUs (live).")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory in MiB (live).")] = None,
    idle_timeout: Annotated[
        int | None, typer.Option(help="Seconds without activity before --on-timeout; 0: none.")
    ] = None,
    on_timeout: Annotated[str | None, typer.Option(help="kill, pause or hibernate.")] = None,
    auto_resume: Annotated[
        bool | None,
        typer.Option("--auto-resume/--no-auto-resume", help="Resume on any call when paused."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Resize a sandbox or change its idle policy."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.update(
            vcpu=vcpu,
            memory_mb=memory,
            idle_timeout=idle_timeout,
            on_timeout=on_timeout,
            auto_resume=auto_resume,
        )
    _render.sandbox_or_json(details, as_json)


def snapshot(
    ctx: typer.Context,
    sandbox_id: Id,
    name: Annotated[str | None, typer.Option(help="A name, unique among yours.")] = None,
    memory: Annotated[
        bool, typer.Option("--memory", help="Also its running processes and memory.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Take a snapshot of a sandbox's disk (and, with --memory, of its processes)."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        taken = sandbox.snapshot(name, memory=memory)
    _snapshot_out([taken], as_json, single=True)


def restore(
    ctx: typer.Context,
    sandbox_id: Id,
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT")],
    as_json: JsonFlag = False,
) -> None:
    """Put a sandbox's disk back to a snapshot (a running one is restarted)."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.restore(snapshot_ref)
    _render.sandbox_or_json(details, as_json)


@snapshots_app.command("ls")
def list_snapshots(
    ctx: typer.Context,
    sandbox: Annotated[str | None, typer.Option(help="Only those of this sandbox.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List your snapshots."""
    with _snapshots(ctx) as client:
        items = client.list(sandbox)
    _snapshot_out(items, as_json)


@snapshots_app.command("get")
def get_snapshot(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="SNAPSHOT")],
    as_json: JsonFlag = False,
) -> None:
    """Show one snapshot (by id or name)."""
    with _snapshots(ctx) as client:
        item = client.get(ref)
    _snapshot_out([item], as_json, single=True)


@snapshots_app.command("rm")
def delete_snapshot(
    ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="SNAPSHOT")]
) -> None:
    """Delete a snapshot and free its space."""
    with _snapshots(ctx) as client:
        client.delete(ref)


def register(app: typer.Typer) -> None:
    for command in (stop, start, restart, update, snapshot, restore):
        app.command()(command)
    app.add_typer(snapshots_app, name="snapshots")
