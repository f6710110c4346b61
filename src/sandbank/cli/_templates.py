"""``sandbank templates``: list (the default), build from a spec file, import
an image archive, make one from a snapshot, alias, remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from sandbank import errors
from sandbank.client import TemplateInfo, Templates

from . import _render
from ._options import server_options

app = typer.Typer(
    help="Templates: list (default), build, import, from-snapshot, alias, rm.",
    invoke_without_command=True,
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Name = Annotated[str, typer.Argument(help="Template name (or alias).")]


def _client(ctx: typer.Context) -> Templates:
    options = server_options(ctx)
    return Templates(api_key=options.resolved_key(), base_url=options.url)


def _table(items: list[TemplateInfo]) -> None:
    table = Table(box=box.SIMPLE, header_style="bold")
    for column in ("NAME", "KIND", "BASE", "ALIASES", "SIZE", "READY"):
        table.add_column(column, overflow="fold")
    for item in items:
        d = item.details
        size = d.get("size_bytes")
        table.add_row(
            item.name, str(d.get("kind") or "-"), str(d.get("base") or "-"),
            ", ".join(d.get("aliases") or []) or "-",
            f"{size / 2**20:.0f} MiB" if isinstance(size, int) else "-",
            "yes" if item.ready else "no",
        )  # fmt: skip
    Console(highlight=False).print(table)


def _show(info: TemplateInfo, as_json: bool) -> None:
    if as_json:
        _render.print_json(info.to_dict())
    else:
        _table([info])


@app.callback()
def templates(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Without a subcommand: list templates."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(ctx) as client:
        items = client.list()
    if as_json:
        _render.print_json([item.to_dict() for item in items])
    else:
        _table(items)


@app.command("ls")
def list_templates(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List templates."""
    templates(ctx, as_json)


@app.command("get")
def get_template(ctx: typer.Context, name: Name, as_json: JsonFlag = False) -> None:
    """Show one template."""
    with _client(ctx) as client:
        _show(client.get(name), as_json)


def load_spec(path: Path) -> tuple[str | None, list[str], dict[str, Any]]:
    """(name, aliases, spec) of a YAML or JSON file: either a bare spec with
    optional ``name``/``aliases`` keys, or ``{name, aliases, spec}``."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.BadRequest(f"{path} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise errors.BadRequest(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.BadRequest(f"{path} must hold a mapping (the template spec)")
    name, aliases = data.pop("name", None), data.pop("aliases", None) or []
    spec = data.pop("spec") if "spec" in data else data
    return name, list(aliases), spec


def _print_event(event: dict[str, Any]) -> None:
    if event.get("type") == "step":
        typer.echo(f"[{event['step']}/{event['total']}] {event['title']}", err=True)
    elif event.get("type") == "log":
        typer.echo(f"    {event.get('line', '')}", err=True)


@app.command("build")
def build(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file (.yaml or .json).")],
    name: Annotated[str | None, typer.Option(help="Template name (default: the file's).")] = None,
    alias: Annotated[list[str] | None, typer.Option(help="An alias to give it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No build log.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build a template from a spec; unchanged specs come from the cache at once."""
    file_name, file_aliases, spec = load_spec(spec_file)
    name = name or file_name
    if not name:
        raise errors.BadRequest("no template name: pass --name or put `name:` in the spec file")
    with _client(ctx) as client:
        result = client.build(
            name, spec, aliases=[*file_aliases, *(alias or [])],
            on_log=None if quiet else _print_event,
        )  # fmt: skip
    if as_json:
        _render.print_json(result.to_dict())
        return
    how = "cached" if result.cached else f"built in {result.seconds:.1f}s"
    typer.echo(f"{result.template.name} ({how})")


@app.command("import")
def import_image(
    ctx: typer.Context,
    path: Annotated[
        str, typer.Argument(help="OCI layout or `docker save` tar on the server host.")
    ],
    name: Annotated[str, typer.Option(help="Template name.")],
    alias: Annotated[list[str] | None, typer.Option(help="An alias to give it.")] = None,
    upload: Annotated[
        bool, typer.Option("--upload", help="PATH is here: send the archive to the server.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Import an OCI image archive (on the server's host, or sent with --upload)."""
    with _client(ctx) as client:
        info = client.import_image(
            name, str(Path(path).absolute()), aliases=alias or [], upload=upload
        )
    _show(info, as_json)


@app.command("from-snapshot")
def from_snapshot(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id or name (yours).")],
    name: Annotated[str, typer.Argument(help="Name of the new template.")],
    alias: Annotated[list[str] | None, typer.Option(help="An alias to give it.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a template of a snapshot's files, stacked on the snapshot's template."""
    with _client(ctx) as client:
        result = client.from_snapshot(snapshot, name, aliases=alias or [])
    if as_json:
        _render.print_json(result.to_dict())
        return
    how = "cached" if result.cached else f"made in {result.seconds:.1f}s"
    typer.echo(f"{result.template.name} ({how})")


@app.command("alias")
def add_alias(
    ctx: typer.Context,
    name: Name,
    alias: str,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the alias instead.")] = False,
) -> None:
    """Give a template another name (e.g. python:3.12), or remove one with --rm."""
    with _client(ctx) as client:
        if remove:
            client.unalias(name, alias)
            typer.echo(f"removed alias {alias}")
        else:
            info = client.alias(name, alias)
            typer.echo(f"{alias} -> {info.name}")


@app.command("rm")
def remove(ctx: typer.Context, name: Name) -> None:
    """Delete a template (refused while sandboxes or other templates use it)."""
    with _client(ctx) as client:
        client.delete(name)
    typer.echo(f"deleted {name}")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="templates")
