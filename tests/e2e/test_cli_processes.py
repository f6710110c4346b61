"""``sandbank exec --background``, ``ps`` and ``logs`` against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.server import ServerProcess


def sandbank(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbank.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    proc = sandbank(env, *args, stdin=stdin)
    assert proc.returncode == 0, f"sandbank {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def sid(
    server: ServerProcess, client_env: dict[str, str], make_sandbox: Callable[..., dict[str, Any]]
) -> str:
    sandbox_id: str = make_sandbox()["id"]
    return sandbox_id


def test_background_ps_logs(client_env: dict[str, str], sid: str) -> None:
    pid = int(ok(client_env, "exec", "--background", sid, "--", "echo out; echo err >&2; exit 3"))
    # -f follows until the process exits.
    proc = sandbank(client_env, "logs", sid, str(pid), "-f")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("out\n", "err\n")
    listed = json.loads(ok(client_env, "ps", sid, "--json"))
    mine = next(p for p in listed if p["pid"] == pid)
    assert mine["exit_code"] == 3 and mine["running"] is False
    assert str(pid) in ok(client_env, "ps", sid)

    pid = int(ok(client_env, "exec", "-b", sid, "--", "sleep", "300"))
    running = json.loads(ok(client_env, "ps", sid, "--running", "--json"))
    assert [p["pid"] for p in running] == [pid]
    assert json.loads(ok(client_env, "exec", "-b", "-i", "--json", sid, "--", "cat", stdin="in"))


def test_logs_of_unknown_pid_fails_cleanly(client_env: dict[str, str], sid: str) -> None:
    proc = sandbank(client_env, "logs", sid, "99999")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: process_not_found:")


def test_exec_streams_stdin_piped_and_ps_shows_streamed_commands(
    client_env: dict[str, str], sid: str
) -> None:
    proc = sandbank(client_env, "exec", "-i", sid, "--", "cat; echo err >&2; exit 4", stdin="piped")
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, "piped", "err\n")
    streamed = subprocess.Popen(
        [sys.executable, "-m", "sandbank.cli", "exec", "--timeout", "0", sid, "--", "sleep 606"],
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        listed: list[dict[str, Any]] = []
        for _ in range(100):
            listed = [
                p
                for p in json.loads(ok(client_env, "ps", sid, "--running", "--json"))
                if " ".join(p["cmd"]).endswith("sleep 606")
            ]
            if listed:
                break
            time.sleep(0.1)
        assert listed and listed[0]["kind"] == "foreground"
        assert "foreground" in ok(client_env, "ps", sid)
    finally:
        streamed.kill()  # the client is gone: so is the command
        streamed.wait()
    pid = listed[0]["pid"]
    for _ in range(100):
        info = json.loads(ok(client_env, "ps", sid, "--json"))
        mine = next(p for p in info if p["pid"] == pid)
        if not mine["running"]:
            break
        time.sleep(0.1)
    assert mine["running"] is False and mine["signal"] == 9
