"""The ``sandbank`` command line, built on the blocking SDK.

Every command that talks to the server reads the global ``--url`` and
``--api-key``; a failure prints ``error: <code>: <message>`` and exits 1.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from sandbank import errors
from sandbank.client import Sandbox

from . import _checkpoints, _files, _lifecycle, _processes, _render, _shell, _templates
from ._options import ServerOptions, parse_pairs, server_options
from ._transfer import copy

_LOCAL_ERROR_CODES = {
    errno.ENOENT: errors.FileNotFound.code,
    errno.EACCES: errors.PermissionDenied.code,
    errno.EPERM: errors.PermissionDenied.code,
    errno.EISDIR: errors.IsADirectory.code,
    errno.ENOTDIR: errors.NotADirectory.code,
    errno.EEXIST: errors.FileExists.code,
}


def fail(code: str, message: str) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(1)


class _ReportingGroup(TyperGroup):
    """Turns errors into one ``error: code: message`` line, never a traceback."""

    # ``ctx`` is typer's vendored click context, which has no public type name.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except errors.SandbankError as exc:
            fail(exc.code, exc.message)
        except OSError as exc:
            # Local files of ``cp``: same codes as the server's file errors.
            code = _LOCAL_ERROR_CODES.get(exc.errno or 0, "local_io_error")
            where = f": {exc.filename}" if exc.filename else ""
            fail(code, f"{exc.strerror or exc}{where}")


app = typer.Typer(
    name="sandbank",
    cls=_ReportingGroup,
    help="Self-hosted sandboxes for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="API keys (admin key required).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Pairs = Annotated[list[str] | None, typer.Option(metavar="K=V")]


@app.callback()
def global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(envvar="SANDBANK_URL", help="Server URL (default http://127.0.0.1:7420)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SANDBANK_API_KEY",
            help="API key; on the server host its admin.key file is the fallback.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = ServerOptions(url=url, api_key=api_key)


@app.command()
def create(
    ctx: typer.Context,
    template: Annotated[str, typer.Option(help="Template to start from.")] = "base",
    name: Annotated[str | None, typer.Option(help="A name for people.")] = None,
    vcpu: Annotated[float | None, typer.Option(help="Virtual CPUs.")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory in MiB.")] = None,
    disk: Annotated[int | None, typer.Option(help="Disk in GiB.")] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds until it is killed.")] = None,
    env: Pairs = None,
    metadata: Pairs = None,
    snapshot: Annotated[str | None, typer.Option(help="Start on a copy of this snapshot.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Start a sandbox."""
    options = server_options(ctx)
    sandbox = Sandbox.create(
        template,
        name=name,
        vcpu=vcpu,
        memory_mb=memory,
        disk_gb=disk,
        envs=parse_pairs("--env", env) or None,
        metadata=parse_pairs("--metadata", metadata) or None,
        timeout=timeout,
        snapshot=snapshot,
        api_key=options.resolved_key(),
        base_url=options.url,
    )
    sandbox.close()
    _render.sandbox_or_json(sandbox.info, as_json)


@app.command("ls")
def list_sandboxes(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only sandboxes in this state.")] = None,
    metadata: Pairs = None,
    as_json: JsonFlag = False,
) -> None:
    """List sandboxes."""
    options = server_options(ctx)
    infos = Sandbox.list(
        status=status,
        metadata=parse_pairs("--metadata", metadata) or None,
        api_key=options.resolved_key(),
        base_url=options.url,
    )
    if as_json:
        _render.print_json([info.to_dict() for info in infos])
    else:
        _render.sandboxes(infos)


@app.command()
def info(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Show one sandbox."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.info
    _render.sandbox_or_json(details, as_json)


@app.command("exec")
def exec_command(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    command: Annotated[list[str], typer.Argument(metavar="CMD")],
    user: Annotated[str, typer.Option(help="user or root.")] = "user",
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    env: Pairs = None,
    timeout: Annotated[float, typer.Option(help="Seconds; 0 for no limit.")] = 60,
    stdin: Annotated[
        bool, typer.Option("--stdin", "-i", help="Pass this stdin to the command.")
    ] = False,
    background: Annotated[
        bool,
        typer.Option("--background", "-b", help="Start it in the background; print its pid."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a command; exit with its exit code.

    Usage: exec ID [OPTIONS] -- CMD... One CMD argument is a shell string
    (sh -c); several are an argv. With --background the timeout defaults to
    none; see `ps` and `logs`.
    """
    cmd: str | list[str] = command[0] if len(command) == 1 else command
    input_text = sys.stdin.read() if stdin else None
    if background:
        with server_options(ctx).sandbox(sandbox_id) as sandbox:
            handle = sandbox.commands.run(
                cmd,
                background=True,
                envs=parse_pairs("--env", env) or None,
                cwd=cwd,
                user=user,
                timeout=timeout if timeout_given(ctx) else 0,
                stdin=input_text,
            )
        if as_json:
            _render.print_json({"pid": handle.pid})
        else:
            typer.echo(handle.pid)
        return
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        # Without --json the output is streamed as it happens.
        result = sandbox.commands.run(
            cmd,
            envs=parse_pairs("--env", env) or None,
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=input_text,
            on_stdout=None if as_json else _processes.echo_to(sys.stdout),
            on_stderr=None if as_json else _processes.echo_to(sys.stderr),
        )
    if as_json:
        _render.print_json(result.to_dict())
    if result.timed_out:
        typer.echo(f"error: {errors.Timeout.code}: command timed out after {timeout:g}s", err=True)
        raise typer.Exit(124)
    # Shells report death by signal N as 128+N; keep codes within 0-255.
    code = result.exit_code if result.exit_code >= 0 else 128 - result.exit_code
    raise typer.Exit(min(code, 255))


def timeout_given(ctx: typer.Context) -> bool:
    source = ctx.get_parameter_source("timeout")
    return source is not None and source.name != "DEFAULT"


_processes.register(app)
_shell.register(app)
_lifecycle.register(app)
_files.register(app)
_templates.register(app)
_checkpoints.register(app)


@app.command()
def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="SRC")],
    destination: Annotated[str, typer.Argument(metavar="DST")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Copy directories (as a tar stream).")
    ] = False,
) -> None:
    """Copy a file to or from a sandbox: ID:/path for the sandbox side, - for stdio."""
    copy(server_options(ctx), source, destination, recursive)


@app.command()
def kill(
    ctx: typer.Context, sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...")]
) -> None:
    """Kill sandboxes."""
    options = server_options(ctx)
    key = options.resolved_key()
    failed = False
    for sandbox_id in sandbox_ids:
        try:
            Sandbox.kill(sandbox_id, api_key=key, base_url=options.url)
        except errors.SandbankError as exc:
            typer.echo(f"error: {exc.code}: {sandbox_id}: {exc.message}", err=True)
            failed = True
        else:
            typer.echo(f"killed {sandbox_id}")
    if failed:
        raise typer.Exit(1)


@app.command()
def timeout(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    seconds: Annotated[int, typer.Argument(metavar="SECONDS")],
    as_json: JsonFlag = False,
) -> None:
    """Kill a sandbox SECONDS from now instead."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.set_timeout(seconds)
    _render.sandbox_or_json(details, as_json)


@app.command()
def pause(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Freeze a sandbox (memory kept, no CPU) until it is resumed."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.pause()
    _render.sandbox_or_json(details, as_json)


@app.command()
def resume(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Resume a paused sandbox."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        details = sandbox.resume()
    _render.sandbox_or_json(details, as_json)


@app.command("open")
def open_port(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    port: Annotated[int, typer.Argument(min=1, max=65535)],
    by_host: Annotated[
        bool, typer.Option("--host", help="the {port}-{id}.localhost form (its own origin)")
    ] = False,
) -> None:
    """Print the preview URL (token included) of TCP PORT inside a sandbox."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        typer.echo(sandbox.preview_url(port, by_host=by_host))


@app.command()
def metrics(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Show a sandbox's resource use."""
    with server_options(ctx).sandbox(sandbox_id) as sandbox:
        data = sandbox.get_metrics()
    if as_json:
        _render.print_json(data.to_dict())
    else:
        _render.metrics(data)


@keys_app.command("create")
def create_key(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for.")],
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it (it is shown only once)."""
    with server_options(ctx).admin() as client:
        created = client.create_key(tenant, name=name, admin=admin)
    if as_json:
        _render.print_json(created.to_dict())
        return
    typer.echo(created.key)
    typer.echo(f"key {created.id} for tenant {created.tenant}; it is not shown again", err=True)


@keys_app.command("list")
def list_keys(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List keys."""
    with server_options(ctx).admin() as client:
        items = client.list_keys()
    if as_json:
        _render.print_json([item.to_dict() for item in items])
    else:
        _render.keys(items)


@keys_app.command("revoke")
def revoke_key(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key."""
    with server_options(ctx).admin() as client:
        client.revoke_key(key_id)
    typer.echo(f"revoked {key_id}")
