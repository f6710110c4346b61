"""``sandbank serve``: prepare the base template (with a progress display),
then run the API server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from sandbank.server.settings import DEFAULT_PORT, Settings


async def _prepare(settings: Settings, template: str) -> None:
    from rich.console import Console

    from sandbank.server.app import make_runtime

    console = Console(stderr=True)
    runtime = make_runtime(settings)
    await runtime.start()
    try:
        with console.status(f"preparing template {template!r}") as status:

            def progress(line: str) -> None:
                status.update(f"template {template!r}: {line[:100]}")

            await runtime.ensure_template(template, on_progress=progress)
    finally:
        await runtime.close()
    console.print(f"template {template!r} ready")


def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help=f"port (default {DEFAULT_PORT})")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="state directory (default /var/lib/sandbank)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run the sandbank server (builds the base template on first start)."""
    import uvicorn

    from sandbank.server.app import ADMIN_KEY_FILE, create_app

    overrides = {
        k: v for k, v in {"host": host, "port": port, "data_dir": data_dir}.items() if v is not None
    }
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.runtime != "fake":
        asyncio.run(_prepare(settings, "base"))
    app = create_app(settings)
    key_hint = (
        "the key in SANDBANK_API_KEY"
        if settings.api_key
        else f"the key in {settings.data_dir / ADMIN_KEY_FILE}"
    )
    typer.echo(f"sandbank listening on {settings.base_url} (admin: {key_hint})", err=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
