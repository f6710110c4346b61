"""Which shell strings run directly and which go through bash."""

from __future__ import annotations

import pytest

from sandbank.server.service.shell import SHELL, command_argv


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("true", ["true"]),
        ("ls -la /tmp", ["ls", "-la", "/tmp"]),
        ("python3 -m pip --version", ["python3", "-m", "pip", "--version"]),
        ("git config user.name=x", ["git", "config", "user.name=x"]),
    ],
)
def test_plain_commands_skip_the_shell(command: str, argv: list[str]) -> None:
    assert command_argv(command) == argv


@pytest.mark.parametrize(
    "command",
    [
        "echo $HOME",
        "ls *.py",
        "cd /tmp",
        "export A=1",
        "A=1 env",
        "echo 'quoted'",
        "true && false",
        "sleep 1 &",
        "cat < f",
        "echo hi > f",
        "ls  -la",
        "ls ~",
        "echo a;b",
        "exit 3",
        "for",
        "x\ny",
        "",
        "-x",
        "echo # comment",
    ],
)
def test_anything_else_goes_through_bash(command: str) -> None:
    assert command_argv(command) == [SHELL, "-c", command]
