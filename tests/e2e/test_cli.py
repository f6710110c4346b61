"""The ``sandbank`` CLI as a subprocess against the real server.

``client_env`` points SANDBANK_URL / SANDBANK_API_KEY at the session server;
every sandbox a test creates is killed when it ends.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sandbank import Sandbox, SandboxNotFound
from tests.support.server import ServerProcess

HOME = "/home/user"


def sandbank(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbank.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(env: dict[str, str], *args: str) -> str:
    proc = sandbank(env, *args)
    assert proc.returncode == 0, f"sandbank {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def create(server: ServerProcess, client_env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """``sandbank create --json ARGS``; the sandboxes are killed afterwards."""
    made: list[str] = []

    def make(*args: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(ok(client_env, "create", "--json", *args))
        made.append(info["id"])
        return info

    yield make
    for sandbox_id in made:
        with contextlib.suppress(SandboxNotFound):
            Sandbox.kill(sandbox_id, base_url=server.url, api_key=server.api_key)


def test_create_info_ls(client_env: dict[str, str], create: Callable[..., Any]) -> None:
    label = uuid.uuid4().hex
    info = create("--metadata", f"label={label}", "--env", "GREETING=hi", "--timeout", "600")
    assert info["status"] == "running"
    assert info["metadata"] == {"label": label}

    shown = json.loads(ok(client_env, "info", info["id"], "--json"))
    assert shown["id"] == info["id"]
    assert info["id"] in ok(client_env, "info", info["id"])

    listed = json.loads(ok(client_env, "ls", "--json", "--metadata", f"label={label}"))
    assert [item["id"] for item in listed] == [info["id"]]
    assert info["id"] in ok(client_env, "ls")
    assert json.loads(ok(client_env, "ls", "--json", "--metadata", "label=none-such")) == []

    assert ok(client_env, "exec", info["id"], "--", "echo $GREETING") == "hi\n"
    later = json.loads(ok(client_env, "timeout", info["id"], "1200", "--json"))
    assert datetime.fromisoformat(later["expires_at"]) > datetime.fromisoformat(info["expires_at"])
    assert json.loads(ok(client_env, "metrics", info["id"], "--json"))["pids_limit"] > 0
    assert "cpu" in ok(client_env, "metrics", info["id"])


def test_exec_propagates_exit_code(client_env: dict[str, str], create: Callable[..., Any]) -> None:
    sandbox_id = create()["id"]
    proc = sandbank(
        client_env, "exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")

    proc = sandbank(client_env, "exec", sandbox_id, "--", "exit 7")
    assert proc.returncode == 7
    assert ok(client_env, "exec", sandbox_id, "--user", "root", "--", "id", "-u") == "0\n"
    assert ok(client_env, "exec", sandbox_id, "--cwd", "/", "--", "pwd") == "/\n"
    piped = sandbank(client_env, "exec", sandbox_id, "--stdin", "--", "cat", stdin="fed")
    assert (piped.returncode, piped.stdout) == (0, "fed")


def test_cp_both_ways(
    client_env: dict[str, str], create: Callable[..., Any], tmp_path: Path
) -> None:
    sandbox_id = create()["id"]
    local = tmp_path / "up.bin"
    payload = bytes(range(256)) * 4096
    local.write_bytes(payload)

    ok(client_env, "cp", str(local), f"{sandbox_id}:{HOME}/up.bin")
    remote_size = ok(client_env, "exec", sandbox_id, "--", f"wc -c < {HOME}/up.bin")
    assert remote_size.strip() == str(len(payload))

    back = tmp_path / "down.bin"
    ok(client_env, "cp", f"{sandbox_id}:{HOME}/up.bin", str(back))
    assert back.read_bytes() == payload

    # Into directories on either side, keeping the file's name.
    ok(client_env, "exec", sandbox_id, "--", f"mkdir -p {HOME}/inbox")
    ok(client_env, "cp", str(local), f"{sandbox_id}:{HOME}/inbox/")
    into = tmp_path / "into"
    into.mkdir()
    ok(client_env, "cp", f"{sandbox_id}:{HOME}/inbox/up.bin", str(into))
    assert (into / "up.bin").read_bytes() == payload

    missing = sandbank(client_env, "cp", f"{sandbox_id}:{HOME}/nope.txt", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: file_not_found: ")
    assert not (tmp_path / "x").exists()


def test_kill(client_env: dict[str, str], create: Callable[..., Any]) -> None:
    first, second = create()["id"], create()["id"]
    assert ok(client_env, "kill", first, second).split() == ["killed", first, "killed", second]
    gone = sandbank(client_env, "info", first)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: sandbox_not_found: ")
    listed = {item["id"] for item in json.loads(ok(client_env, "ls", "--json"))}
    assert not listed & {first, second}


def test_templates(client_env: dict[str, str]) -> None:
    names = {item["name"] for item in json.loads(ok(client_env, "templates", "--json"))}
    assert "base" in names


def test_keys_create_list_revoke(client_env: dict[str, str]) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = json.loads(ok(client_env, "keys", "create", "--tenant", tenant, "--json"))
    assert created["tenant"] == tenant and created["key"]
    listed = json.loads(ok(client_env, "keys", "list", "--json"))
    assert created["id"] in {item["id"] for item in listed}

    assert json.loads(ok(client_env, "--api-key", created["key"], "ls", "--json")) == []

    assert ok(client_env, "keys", "revoke", created["id"]).strip() == f"revoked {created['id']}"
    revoked = sandbank(client_env, "--api-key", created["key"], "ls")
    assert revoked.returncode == 1
    assert revoked.stderr.startswith("error: unauthorized: ")

    plain = sandbank(client_env, "keys", "create", "--tenant", tenant, "--name", "plain")
    assert plain.returncode == 0
    key = plain.stdout.strip()
    assert key and "\n" not in key
    assert json.loads(ok(client_env, "--api-key", key, "ls", "--json")) == []


def test_bad_key_is_unauthorized(client_env: dict[str, str]) -> None:
    proc = sandbank(client_env, "--api-key", "sbk_not_a_real_key", "ls")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unauthorized: ")
    assert proc.stdout == ""


def test_unreachable_server(client_env: dict[str, str]) -> None:
    env = {**client_env, "SANDBANK_URL": "http://127.0.0.1:9"}
    proc = sandbank(env, "ls")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: server_unreachable: ")
    assert "http://127.0.0.1:9" in proc.stderr
