"""CLI pieces that need no server: key discovery, argument parsing, error output."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sandbank import BadRequest, CommandResult, InvalidPath, Unauthorized
from sandbank.cli import _options
from sandbank.cli._options import ServerOptions, parse_pairs
from sandbank.cli._transfer import split_location
from sandbank.cli.main import app

runner = CliRunner()


@pytest.fixture
def no_default_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_options, "DEFAULT_DATA_DIR", tmp_path / "absent")
    monkeypatch.delenv("SANDBANK_DATA_DIR", raising=False)
    monkeypatch.delenv("SANDBANK_API_KEY", raising=False)


def test_admin_key_file_is_the_fallback(
    no_default_key: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "admin.key").write_text("sbk_from_file\n")
    monkeypatch.setenv("SANDBANK_DATA_DIR", str(tmp_path))
    assert ServerOptions(url=None, api_key=None).resolved_key() == "sbk_from_file"
    assert ServerOptions(url=None, api_key="explicit").resolved_key() == "explicit"


def test_no_key_anywhere_is_unauthorized(no_default_key: None) -> None:
    with pytest.raises(Unauthorized, match="--api-key"):
        ServerOptions(url=None, api_key=None).resolved_key()
    result = runner.invoke(app, ["ls"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unauthorized: no API key")


def test_pairs_and_locations() -> None:
    assert parse_pairs("--env", ["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(BadRequest, match="--env expects KEY=VALUE"):
        parse_pairs("--env", ["A"])
    assert split_location("abc123:/home/user/f") == ("abc123", "/home/user/f")
    assert split_location("./abc:def") == (None, "./abc:def")
    assert split_location("/tmp/x") == (None, "/tmp/x")
    with pytest.raises(InvalidPath):
        split_location("abc123:")


def test_unreachable_server_is_one_error_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = runner.invoke(app, ["--url", url, "--api-key", "k", "ls", "--json"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: server_unreachable: cannot reach the sandbank server at {url}"
    )
    assert "Traceback" not in result.output


class FakeCommands:
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def run(self, cmd: Any, **options: Any) -> CommandResult:
        """As the SDK: output goes to the handlers (streamed) when given."""
        self.calls.append((cmd, options))
        for name, text in (("on_stdout", self.result.stdout), ("on_stderr", self.result.stderr)):
            if options.get(name) is not None and text:
                options[name](text)
        return self.result


class FakeSandbox:
    def __init__(self, result: CommandResult) -> None:
        self.commands = FakeCommands(result)


def fake_exec(monkeypatch: pytest.MonkeyPatch, result: CommandResult) -> FakeSandbox:
    sandbox = FakeSandbox(result)

    @contextmanager
    def attached(self: ServerOptions, sandbox_id: str) -> Iterator[FakeSandbox]:
        yield sandbox

    monkeypatch.setattr(ServerOptions, "sandbox", attached)
    return sandbox


def test_exec_passes_streams_and_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = fake_exec(monkeypatch, CommandResult(3, "out\n", "err\n", 1.0, False))
    result = runner.invoke(
        app, ["--api-key", "k", "exec", "sbx1", "--env", "A=1", "--", "sh", "-c", "exit 3"]
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    cmd, options = sandbox.commands.calls[0]
    assert cmd == ["sh", "-c", "exit 3"]
    assert options["envs"] == {"A": "1"} and options["user"] == "user"

    runner.invoke(app, ["--api-key", "k", "exec", "sbx1", "--", "echo $HOME"])
    assert sandbox.commands.calls[-1][0] == "echo $HOME"


def test_exec_timeout_and_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_exec(monkeypatch, CommandResult(-9, "", "", 1.0, True))
    result = runner.invoke(app, ["--api-key", "k", "exec", "sbx1", "--timeout", "2", "--", "x"])
    assert result.exit_code == 124
    assert result.stderr.startswith("error: timeout: command timed out after 2s")
    fake_exec(monkeypatch, CommandResult(-15, "", "", 1.0, False))
    assert runner.invoke(app, ["--api-key", "k", "exec", "sbx1", "--", "x"]).exit_code == 143
