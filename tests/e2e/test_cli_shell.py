"""``sandbank shell`` from a real terminal: tmux gives the CLI a pty of its own,
keys go in with send-keys, and the screen is read back with capture-pane."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess

SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """A tmux server of this test's own (its own socket), with one session."""

    def __init__(self, directory: Path) -> None:
        self.socket = f"sandbank-test-{os.getpid()}-{secrets.token_hex(3)}"
        # The server's socket goes in the test's own directory, not /tmp.
        self.env = {**os.environ, "TMUX_TMPDIR": str(directory)}

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True, text=True, timeout=30, check=True, env=self.env,
        )  # fmt: skip
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-J", "-t", "cli", "-S", "-200")

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the screen:\n{screen}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "cli", *keys)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path)
    yield session
    subprocess.run(
        ["tmux", "-L", session.socket, "kill-server"],
        capture_output=True, timeout=30, env=session.env,
    )  # fmt: skip


def test_shell_in_tmux(
    tmux: Tmux, server: ServerProcess, make_sandbox: Callable[..., dict[str, Any]]
) -> None:
    sid = make_sandbox()["id"]
    env = {"SANDBANK_URL": server.url, "SANDBANK_API_KEY": server.api_key, "PYTHONPATH": str(SRC)}
    cli = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()),
                      sys.executable, "-m", "sandbank.cli", "shell", sid])  # fmt: skip
    # After the CLI: its exit code, and whether the local terminal is cooked again.
    script = (
        f"{cli}; echo CLI-EXIT=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon; "
        "sleep 60"
    )
    tmux("new-session", "-d", "-s", "cli", "-x", "80", "-y", "24", "sh", "-c", script)
    tmux("set-option", "-g", "status", "off")
    tmux.keys("echo hello-$((40+2))", "Enter")
    tmux.wait_for(r"hello-42")
    # Ctrl-C stops the sandbox's foreground job; the CLI goes on.
    tmux.keys("sleep 100", "Enter")
    time.sleep(0.5)
    tmux.keys("C-c")
    tmux.keys("echo after-$?", "Enter")
    tmux.wait_for(r"after-130")
    # The window's new size reaches the sandbox's terminal through SIGWINCH.
    tmux("resize-window", "-t", "cli", "-x", "100", "-y", "30")
    time.sleep(0.5)
    tmux.keys("stty size", "Enter")
    tmux.wait_for(r"(?m)^30 100\s*$")
    tmux.keys("exit 3", "Enter")
    screen = tmux.wait_for(r"CLI-EXIT=\d+\s+-?icanon")
    assert "CLI-EXIT=3" in screen
    assert re.search(r"(?m)^icanon\s*$", screen), screen


def test_shell_without_a_terminal(
    client_env: dict[str, str], make_sandbox: Callable[..., dict[str, Any]]
) -> None:
    """Piped input is typed in as it comes; the exit code still comes back."""
    sid = make_sandbox()["id"]
    env = {**client_env, "PYTHONPATH": str(SRC)}
    base = [sys.executable, "-m", "sandbank.cli", "shell", sid]
    piped = subprocess.run(
        base, input=b"echo piped-$((3*3)); exit 4\n", capture_output=True, env=env, timeout=60
    )
    assert piped.returncode == 4, piped.stderr
    assert b"piped-9" in piped.stdout
    with open(os.devnull, "rb") as nothing:
        done = subprocess.run(
            [*base, "--", "sh", "-c", "echo from-cmd; exit 6"],
            stdin=nothing, capture_output=True, env=env, timeout=60,
        )  # fmt: skip
    assert done.returncode == 6 and b"from-cmd" in done.stdout, done.stderr
