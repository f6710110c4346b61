"""Templates made from snapshots on the real server: a sandbox's files and
deletions carried into sandboxes of the new template, the template outliving
the snapshot, the cache, name clashes, unknown and other tenants' snapshots,
and the SDK and CLI."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sandbank.client import Templates
from sandbank.errors import Conflict, SnapshotNotFound
from tests.conftest import TEMPLATES
from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]


def run(api: httpx.Client, sandbox_id: str, command: str) -> str:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    assert resp.json()["exit_code"] == 0, resp.json()
    out: str = resp.json()["stdout"]
    return out


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbank", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture
def names(server: ServerProcess) -> Iterator[list[str]]:
    """Templates a test made, deleted at its end (the templates dir is shared)."""
    made: list[str] = []
    yield made
    with server.client() as api:
        for name in reversed(made):
            resp = api.delete(f"/v1/templates/{name}")
            assert resp.status_code in (204, 404), resp.text


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def snapshot_mounts(server: ServerProcess) -> list[str]:
    """Snapshot images mounted where the server can see them (the copy mounts
    them in a namespace of its own) or still bound to a loop device."""
    with open("/proc/self/mounts") as fh:
        found = [line for line in fh if f"{TEMPLATES}/" in line and "/.build-" in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return found + [line for line in loops.splitlines() if f"{server.data_dir}/snapshots" in line]


#: What the source sandbox does: new files (as user and as root), a deleted base
#: file (a whiteout) and a replaced base directory (an opaque dir).
CHANGES = (
    "echo made-here > ~/made.txt; mkdir -p ~/proj/src && echo 'print(1)' > ~/proj/src/a.py; "
    "sudo rm /etc/issue; sudo rm -rf /usr/share/doc; sudo mkdir /usr/share/doc; "
    "echo only | sudo tee /usr/share/doc/only >/dev/null; "
    "echo root-owned | sudo tee /opt/root.txt >/dev/null"
)
CHECK = (
    "cat ~/made.txt ~/proj/src/a.py /opt/root.txt; test -e /etc/issue || echo issue-gone; "
    "ls /usr/share/doc; stat -c '%U:%G' ~/made.txt /opt/root.txt"
)
EXPECTED = "made-here\nprint(1)\nroot-owned\nissue-gone\nonly\nuser:user\nroot:root\n"


def test_template_from_snapshot(
    api: httpx.Client, make_sandbox: Make, names: list[str], server: ServerProcess
) -> None:
    source = make_sandbox()["id"]
    run(api, source, CHANGES)
    snap = api.post(f"/v1/sandboxes/{source}/snapshots", json={"name": unique("tsnap")}).json()
    name = unique("fromsnap")
    names.append(name)

    made = api.post("/v1/templates/from-snapshot", json={"name": name, "snapshot": snap["name"],
                                                          "aliases": [f"{name}:v1"]})  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["cached"] is False
    template = body["template"]
    assert template["name"] == name and template["kind"] == "snapshot"
    assert template["base"] == "base" and template["aliases"] == [f"{name}:v1"]
    assert template["ready"] is True and template["size_bytes"] > 0

    # The same snapshot again, by id this time: the cache, nothing copied.
    again = api.post("/v1/templates/from-snapshot", json={"name": name, "snapshot": snap["id"]})
    assert again.status_code == 200, again.text
    assert again.json()["cached"] is True
    assert again.json()["template"]["recipe_hash"] == template["recipe_hash"]

    # The snapshot goes; the template keeps everything it needs.
    assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204
    box = make_sandbox(template=f"{name}:v1")
    assert box["template"] == name
    assert run(api, box["id"], CHECK) == EXPECTED
    # Per-sandbox files are never inherited: the new sandbox has its own name.
    names_seen = {run(api, i, "cat /etc/hostname; hostname") for i in (source, box["id"])}
    assert len(names_seen) == 2 and all(len(set(n.split())) == 1 for n in names_seen)
    # The source never changed by any of it, and the copy is the new sandbox's own.
    run(api, box["id"], "echo changed > ~/made.txt")
    assert run(api, source, "cat ~/made.txt") == "made-here\n"
    # The template (and its base) cannot go while a sandbox runs on it.
    assert api.delete(f"/v1/templates/{name}").status_code == 409
    assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204
    assert snapshot_mounts(server) == []


def test_names_unknown_and_foreign_snapshots(
    api: httpx.Client, make_sandbox: Make, names: list[str], server: ServerProcess
) -> None:
    source = make_sandbox()["id"]
    run(api, source, "echo one > ~/f")
    first = api.post(f"/v1/sandboxes/{source}/snapshots").json()
    name = unique("clash")
    names.append(name)
    made = api.post("/v1/templates/from-snapshot", json={"name": name, "snapshot": first["id"]})
    assert made.status_code == 201, made.text

    # Another snapshot under a taken name (or a recipe's) is a clash, not a replacement.
    second = api.post(f"/v1/sandboxes/{source}/snapshots").json()
    for taken in (name, "base"):
        clash = api.post("/v1/templates/from-snapshot",
                         json={"name": taken, "snapshot": second["id"]})  # fmt: skip
        assert clash.status_code == 409, clash.text
        assert clash.json()["code"] == "conflict" and taken in clash.json()["message"]
    kept = api.get(f"/v1/templates/{name}").json()
    assert kept["recipe_hash"] == made.json()["template"]["recipe_hash"]

    missing = api.post("/v1/templates/from-snapshot",
                       json={"name": unique("none"), "snapshot": "no-such-snapshot"})  # fmt: skip
    assert missing.status_code == 404 and missing.json()["code"] == "snapshot_not_found"
    bad_name = {"name": "Bad Name", "snapshot": first["id"]}
    bad = api.post("/v1/templates/from-snapshot", json=bad_name)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"

    key = api.post("/v1/keys", json={"tenant": "tsnap-other"}).json()["key"]
    with server.client(key) as them:
        theirs = them.post("/v1/sandboxes", json={}).json()["id"]
        try:
            own = them.post(f"/v1/sandboxes/{theirs}/snapshots", json={"name": "theirs"}).json()
            # Theirs is not found for us, by id or by name; and making templates is
            # an admin's: a tenant's key may not publish anything to everyone.
            for ref in (own["id"], "theirs"):
                foreign = api.post("/v1/templates/from-snapshot",
                                   json={"name": unique("foreign"), "snapshot": ref})  # fmt: skip
                assert foreign.status_code == 404, foreign.text
            denied = them.post("/v1/templates/from-snapshot",
                               json={"name": unique("denied"), "snapshot": own["id"]})  # fmt: skip
            assert denied.status_code == 403
            assert them.delete(f"/v1/snapshots/{own['id']}").status_code == 204
        finally:
            assert them.delete(f"/v1/sandboxes/{theirs}").status_code == 204
    for snap in (first, second):
        assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204


def test_sdk_and_cli(
    server: ServerProcess, make_sandbox: Make, api: httpx.Client, names: list[str],
    client_env: dict[str, str],
) -> None:  # fmt: skip
    source = make_sandbox()["id"]
    run(api, source, "echo via-cli > ~/cli.txt")
    snap = api.post(f"/v1/sandboxes/{source}/snapshots", json={"name": unique("clisnap")}).json()
    name = unique("clitpl")
    names.append(name)
    done = cli(client_env, "templates", "from-snapshot", snap["name"], name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{name} (made in")
    again = cli(client_env, "templates", "from-snapshot", snap["name"], name, "--json")
    assert json.loads(again.stdout)["cached"] is True, again.stdout
    missing = cli(client_env, "templates", "from-snapshot", "no-such-snapshot", unique("x"))
    assert missing.returncode == 1 and "snapshot_not_found" in missing.stderr

    with Templates(api_key=server.api_key, base_url=server.url) as templates:
        cached = templates.from_snapshot(snap["id"], name)
        assert cached.cached is True and cached.template.name == name
        with pytest.raises(Conflict):
            templates.from_snapshot(snap["id"], "base")
        with pytest.raises(SnapshotNotFound):
            templates.from_snapshot("no-such-snapshot", unique("y"))
    box = make_sandbox(template=name)
    assert run(api, box["id"], "cat ~/cli.txt") == "via-cli\n"
    assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204
    assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204
