"""The files endpoints against real sandboxes: streaming, errors, escapes."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def box(server: Any) -> Any:
    with server.client() as client:
        info = client.post("/v1/sandboxes", json={"disk_gb": 2}).json()
        yield info
        assert client.delete(f"/v1/sandboxes/{info['id']}").status_code == 204


def url(box: dict[str, Any], suffix: str = "") -> str:
    return f"/v1/sandboxes/{box['id']}/files{suffix}"


def test_round_trip_and_metadata(api: httpx.Client, box: dict[str, Any]) -> None:
    resp = api.put(url(box), params={"path": "/home/user/deep/er/hello.txt"}, content=b"hi\n")
    assert resp.status_code == 200, resp.text
    entry = resp.json()
    assert (entry["type"], entry["size"], entry["owner"]) == ("file", 3, "user")
    assert api.get(url(box), params={"path": "deep/er/hello.txt"}).content == b"hi\n"
    stat = api.get(url(box, "/stat"), params={"path": "/home/user/deep"}).json()
    assert stat["type"] == "dir"
    listing = api.get(url(box, "/list"), params={"path": "/home/user/deep", "depth": 2}).json()
    assert {e["path"] for e in listing["entries"]} >= {
        "/home/user/deep/er",
        "/home/user/deep/er/hello.txt",
    }
    moved = api.post(
        url(box, "/move"),
        json={"source": "deep/er/hello.txt", "destination": "/home/user/moved.txt"},
    )
    assert moved.status_code == 200 and moved.json()["path"] == "/home/user/moved.txt"
    made = api.post(url(box, "/mkdir"), json={"path": "/home/user/newdir"}).json()
    again = api.post(url(box, "/mkdir"), json={"path": "/home/user/newdir"}).json()
    assert made["created"] is True and again["created"] is False
    assert api.delete(url(box), params={"path": "/home/user/deep"}).status_code == 409
    assert (
        api.delete(url(box), params={"path": "/home/user/deep", "recursive": "true"}).status_code
        == 204
    )
    gone = api.get(url(box, "/stat"), params={"path": "/home/user/deep"})
    assert gone.status_code == 404 and gone.json()["code"] == "file_not_found"
    exec_out = api.post(
        f"/v1/sandboxes/{box['id']}/exec", json={"command": "cat ~/moved.txt; stat -c %U ~/newdir"}
    ).json()
    assert exec_out["stdout"] == "hi\nuser\n"


def test_empty_file(api: httpx.Client, box: dict[str, Any]) -> None:
    assert api.put(url(box), params={"path": "empty"}, content=b"").json()["size"] == 0
    resp = api.get(url(box), params={"path": "empty"})
    assert resp.status_code == 200 and resp.content == b""


def test_errors(api: httpx.Client, box: dict[str, Any]) -> None:
    resp = api.get(url(box), params={"path": "/nope"})
    assert (resp.status_code, resp.json()["code"]) == (404, "file_not_found")
    resp = api.get(url(box), params={"path": "/etc"})
    assert (resp.status_code, resp.json()["code"]) == (400, "is_a_directory")
    resp = api.put(url(box), params={"path": "/etc"}, content=b"x")
    assert (resp.status_code, resp.json()["code"]) == (400, "is_a_directory")
    assert api.get(url(box)).status_code == 422  # no path
    resp = api.get(url(box, "/list"), params={"path": "/", "depth": 0})
    assert resp.status_code == 422
    resp = api.post(url(box, "/move"), json={"source": "/nope", "destination": "/x"})
    assert resp.status_code == 404


def test_paths_never_reach_the_host(api: httpx.Client, box: dict[str, Any]) -> None:
    marker = Path("/tmp") / f"host-secret-{secrets.token_hex(4)}"
    marker.write_text("host only")
    try:
        for path in (
            f"../../../../..{marker}",
            f"/home/user/../../..{marker}",
            f"{marker}",
        ):
            resp = api.get(url(box), params={"path": path})
            assert resp.status_code == 404, (path, resp.text)
        api.post(
            f"/v1/sandboxes/{box['id']}/exec",
            json={"command": f"ln -sf /../../../{marker} ~/escape; ln -sfn / ~/rootlink"},
        )
        assert api.get(url(box), params={"path": "escape"}).status_code == 404
        resp = api.get(url(box), params={"path": "rootlink/etc/hostname"})
        assert resp.status_code == 200 and b"host only" not in resp.content
        # Writes through `..` land inside the sandbox too.
        api.put(url(box), params={"path": f"../../../..{marker}"}, content=b"overwritten")
        assert marker.read_text() == "host only"
    finally:
        marker.unlink()


def _stream(total: int, digest: Any) -> Iterator[bytes]:
    block = os.urandom(1 << 20)
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        digest.update(chunk)
        sent += len(chunk)
        yield chunk


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_one_gigabyte_streams_both_ways(
    server: Any, api: httpx.Client, box: dict[str, Any]
) -> None:
    total = 1 << 30
    sent_digest = hashlib.sha256()
    rss_before = _rss_kb(server.proc.pid)
    resp = api.put(url(box), params={"path": "/tmp/big.bin"}, content=_stream(total, sent_digest))
    assert resp.status_code == 200, resp.text
    assert resp.json()["size"] == total
    got_digest = hashlib.sha256()
    received = 0
    with api.stream("GET", url(box), params={"path": "/tmp/big.bin"}) as stream:
        assert stream.status_code == 200
        for chunk in stream.iter_bytes():
            got_digest.update(chunk)
            received += len(chunk)
    assert received == total
    assert got_digest.hexdigest() == sent_digest.hexdigest()
    # Neither direction held the file in the server's memory.
    assert _rss_kb(server.proc.pid) - rss_before < 200 * 1024
    api.delete(url(box), params={"path": "/tmp/big.bin"})
