"""The ``sandbank`` command: the client CLI, plus ``serve`` where the server
extras are installed."""

from __future__ import annotations


def main() -> None:
    from sandbank.cli.main import app

    try:
        from sandbank.server.serve import serve
    except ImportError:  # an SDK-only install has no server dependencies
        pass
    else:
        app.command("serve")(serve)
    app()
