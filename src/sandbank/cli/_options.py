"""The CLI's global options and how they become SDK arguments."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from sandbank import errors
from sandbank.client import AdminClient, Sandbox

#: Where ``sandbank serve`` keeps its generated admin key when none is configured.
DEFAULT_DATA_DIR = Path("/var/lib/sandbank")
ADMIN_KEY_FILE = "admin.key"


def admin_key_files() -> list[Path]:
    """Candidate admin key files, the configured data dir first."""
    candidates = []
    data_dir = os.environ.get("SANDBANK_DATA_DIR", "").strip()
    if data_dir:
        candidates.append(Path(data_dir) / ADMIN_KEY_FILE)
    candidates.append(DEFAULT_DATA_DIR / ADMIN_KEY_FILE)
    return candidates


def read_admin_key() -> str | None:
    """The server's own admin key, for a person working on the server host."""
    for path in admin_key_files():
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key
    return None


@dataclass
class ServerOptions:
    url: str | None
    api_key: str | None

    def resolved_key(self) -> str:
        key = (self.api_key or "").strip() or read_admin_key()
        if not key:
            places = " or ".join(str(path) for path in admin_key_files())
            raise errors.Unauthorized(
                "no API key: pass --api-key or set SANDBANK_API_KEY "
                f"(on the server host, {places} is used when readable)"
            )
        return key

    @contextmanager
    def sandbox(self, sandbox_id: str) -> Iterator[Sandbox]:
        """An existing sandbox, detached (not killed) afterwards."""
        sandbox = Sandbox.connect(sandbox_id, api_key=self.resolved_key(), base_url=self.url)
        try:
            yield sandbox
        finally:
            sandbox.close()

    @contextmanager
    def admin(self) -> Iterator[AdminClient]:
        with AdminClient(api_key=self.resolved_key(), base_url=self.url) as client:
            yield client


def parse_pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` from a repeatable option, as a dict."""
    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.BadRequest(f"{option} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def server_options(ctx: typer.Context) -> ServerOptions:
    """The global options the app callback put on the context."""
    options = ctx.find_object(ServerOptions)
    assert options is not None, "the app callback sets the server options"
    return options
