"""Snapshots against the real server: consistent copies of a sandbox's disk,
restore in place, sandboxes created from them, tenants kept apart, space
given back on delete, and a full disk that leaves the source untouched."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import new_server
from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]


def run(api: httpx.Client, sandbox_id: str, command: str) -> str:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    assert resp.json()["exit_code"] == 0, resp.json()
    out: str = resp.json()["stdout"]
    return out


def host_bytes(path: Path) -> int:
    """What ``du`` says the files under ``path`` occupy."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def test_snapshot_restore_and_create_from(
    api: httpx.Client, make_sandbox: Make, server: ServerProcess
) -> None:
    source = make_sandbox()["id"]
    run(api, source, "echo v1 > ~/data.txt; head -c 8000000 /dev/urandom > ~/blob; "
        "sha256sum ~/blob > ~/blob.sum")  # fmt: skip
    taken = api.post(f"/v1/sandboxes/{source}/snapshots", json={"name": "v1"})
    assert taken.status_code == 201, taken.text
    snap = taken.json()
    assert snap["name"] == "v1" and snap["sandbox_id"] == source
    assert snap["template"] == "base" and snap["size_bytes"] >= 8_000_000
    files = server.data_dir / "snapshots" / snap["id"]
    assert (files / "disk.img").is_file()
    assert abs(host_bytes(files) - snap["size_bytes"]) < 1_000_000
    # The sandbox ran on, unfrozen.
    assert api.get(f"/v1/sandboxes/{source}").json()["status"] == "running"
    assert run(api, source, "echo alive") == "alive\n"

    assert api.get(f"/v1/snapshots/{snap['id']}").json() == snap
    assert api.get("/v1/snapshots/v1").json()["id"] == snap["id"]
    assert snap["id"] in [s["id"] for s in api.get("/v1/snapshots").json()["data"]]
    listed = api.get(f"/v1/sandboxes/{source}/snapshots").json()["data"]
    assert [s["id"] for s in listed] == [snap["id"]]
    dup = api.post(f"/v1/sandboxes/{source}/snapshots", json={"name": "v1"})
    assert dup.status_code == 409

    # Change the disk, then put it back.
    run(api, source, "echo v2 > ~/data.txt; rm ~/blob; nohup sleep 1000 >/dev/null 2>&1 &")
    restored = api.post(f"/v1/sandboxes/{source}/restore", json={"snapshot": "v1"})
    assert restored.status_code == 200, restored.text
    assert restored.json()["status"] == "running"
    assert run(api, source, "cat ~/data.txt; sha256sum -c --quiet ~/blob.sum && echo ok; "
               "pgrep -c sleep || true") == "v1\nok\n0\n"  # fmt: skip

    # A stopped sandbox is restored and stays stopped.
    run(api, source, "echo v3 > ~/data.txt")
    assert api.post(f"/v1/sandboxes/{source}/stop").status_code == 200
    again = api.post(f"/v1/sandboxes/{source}/restore", json={"snapshot": snap["id"]})
    assert again.status_code == 200 and again.json()["status"] == "stopped"
    assert api.post(f"/v1/sandboxes/{source}/start").status_code == 200
    assert run(api, source, "cat ~/data.txt") == "v1\n"

    # A new sandbox from the snapshot, while the source lives on independently.
    clone = make_sandbox(snapshot="v1")
    assert clone["template"] == "base" and clone["status"] == "running"
    assert run(api, clone["id"], "cat ~/data.txt; sha256sum -c --quiet ~/blob.sum && echo ok") \
        == "v1\nok\n"  # fmt: skip
    run(api, clone["id"], "echo clone > ~/data.txt")
    assert run(api, source, "cat ~/data.txt") == "v1\n"

    # Deleting the snapshot gives its space back; the sandboxes are unaffected.
    assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204
    assert not files.exists()
    assert api.get(f"/v1/snapshots/{snap['id']}").status_code == 404
    assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 404
    assert run(api, clone["id"], "cat ~/data.txt") == "clone\n"


def test_snapshot_states_and_bad_input(api: httpx.Client, make_sandbox: Make) -> None:
    sandbox_id = make_sandbox()["id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    run(api, sandbox_id, "echo paused > ~/p.txt")
    assert api.post(f"{base}/pause").status_code == 200
    paused_snap = api.post(f"{base}/snapshots", json={})
    assert paused_snap.status_code == 201, paused_snap.text
    assert api.get(base).json()["status"] == "paused"
    assert api.post(f"{base}/stop").status_code == 200
    stopped_snap = api.post(f"{base}/snapshots")
    assert stopped_snap.status_code == 201, stopped_snap.text
    missing = api.post(f"{base}/restore", json={"snapshot": "no-such-snapshot"})
    assert missing.status_code == 404 and missing.json()["code"] == "snapshot_not_found"
    assert api.post(f"{base}/snapshots", json={"name": "../x"}).status_code == 422
    assert api.post("/v1/sandboxes", json={"snapshot": "nope"}).status_code == 404
    clash = api.post("/v1/sandboxes", json={"snapshot": paused_snap.json()["id"], "disk_gb": 2})
    assert clash.status_code == 422
    clone = make_sandbox(snapshot=paused_snap.json()["id"])
    assert run(api, clone["id"], "cat ~/p.txt") == "paused\n"
    for snap in (paused_snap.json(), stopped_snap.json()):
        assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204


def test_tenants_never_see_each_others_snapshots(
    api: httpx.Client, make_sandbox: Make, server: ServerProcess
) -> None:
    mine = make_sandbox()["id"]
    snap = api.post(f"/v1/sandboxes/{mine}/snapshots", json={"name": "private"}).json()
    key = api.post("/v1/keys", json={"tenant": "snap-other"}).json()["key"]
    with server.client(key) as them:
        theirs = them.post("/v1/sandboxes", json={}).json()["id"]
        try:
            assert them.get("/v1/snapshots").json()["data"] == []
            for ref in (snap["id"], "private"):
                assert them.get(f"/v1/snapshots/{ref}").status_code == 404
                assert them.delete(f"/v1/snapshots/{ref}").status_code == 404
                restore = them.post(f"/v1/sandboxes/{theirs}/restore", json={"snapshot": ref})
                assert restore.status_code == 404
                assert restore.json()["code"] == "snapshot_not_found"
                assert them.post("/v1/sandboxes", json={"snapshot": ref}).status_code == 404
            assert them.post(f"/v1/sandboxes/{mine}/snapshots").status_code == 404
            # Names are per tenant: theirs may be called the same.
            own = them.post(f"/v1/sandboxes/{theirs}/snapshots", json={"name": "private"})
            assert own.status_code == 201
            assert them.delete(f"/v1/snapshots/{own.json()['id']}").status_code == 204
        finally:
            assert them.delete(f"/v1/sandboxes/{theirs}").status_code == 204
    assert api.get(f"/v1/snapshots/{snap['id']}").status_code == 200
    assert api.delete(f"/v1/snapshots/{snap['id']}").status_code == 204


def test_snapshot_on_a_full_disk_leaves_the_source_untouched() -> None:
    srv = new_server("snapfull")
    # The snapshots live on a file system with room for far less than the disk.
    folder = srv.data_dir / "snapshots"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        srv.start()
        with srv.client() as api:
            sandbox_id = api.post("/v1/sandboxes", json={}).json()["id"]
            # While it fits: a snapshot takes its size from the file system, and
            # deleting it gives exactly that back (df of a file system only this uses).
            free = os.statvfs(folder).f_bfree
            small = api.post(f"/v1/sandboxes/{sandbox_id}/snapshots").json()
            used = (free - os.statvfs(folder).f_bfree) * os.statvfs(folder).f_frsize
            assert used >= small["size_bytes"] > 0
            assert api.delete(f"/v1/snapshots/{small['id']}").status_code == 204
            assert os.statvfs(folder).f_bfree == free
            run(api, sandbox_id, "head -c 16000000 /dev/urandom > ~/blob; sha256sum ~/blob > ~/s")
            full = api.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={"name": "big"})
            assert full.status_code == 507, full.text
            assert full.json()["code"] == "disk_full"
            assert "unchanged" in full.json()["message"]
            assert os.listdir(folder) == []
            assert api.get("/v1/snapshots").json()["data"] == []
            info = api.get(f"/v1/sandboxes/{sandbox_id}").json()
            assert info["status"] == "running"
            assert run(api, sandbox_id, "sha256sum -c --quiet ~/s && echo ok") == "ok\n"
            assert run(api, sandbox_id, "echo still writable > ~/w; cat ~/w") == "still writable\n"
            assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    finally:
        srv.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(folder)], check=True)
        srv.purge()
