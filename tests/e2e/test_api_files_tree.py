"""Directory transfers, batches, chmod/chown, find, text reads and watches over
the HTTP API, against real sandboxes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> Iterator[dict[str, Any]]:
    with server.client() as client:
        info = client.post("/v1/sandboxes", json={"disk_gb": 2}).json()
        yield info
        assert client.delete(f"/v1/sandboxes/{info['id']}").status_code == 204


def url(box: dict[str, Any], suffix: str = "") -> str:
    return f"/v1/sandboxes/{box['id']}/files{suffix}"


def sh(api: httpx.Client, box: dict[str, Any], command: str, user: str = "user") -> str:
    body = {"command": command, "user": user}
    resp = api.post(f"/v1/sandboxes/{box['id']}/exec", json=body)
    assert resp.status_code == 200, resp.text
    out: str = resp.json()["stdout"]
    return out


def tar_bytes(members: list[tuple[str, bytes | None, bytes, str]]) -> bytes:
    """(name, data or None, tar type, link target) -> a tar archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_directory_round_trip(api: httpx.Client, box: dict[str, Any]) -> None:
    body = tar_bytes(
        [
            ("src", None, tarfile.DIRTYPE, ""),
            ("src/main.py", b"print('hi')\n", tarfile.REGTYPE, ""),
            ("src/pkg/deep.txt", b"deep", tarfile.REGTYPE, ""),
            ("link", None, tarfile.SYMTYPE, "src/main.py"),
            ("empty", None, tarfile.DIRTYPE, ""),
        ]
    )
    resp = api.put(url(box, "/tar"), params={"path": "proj"}, content=body)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["path"], resp.json()["type"]) == ("/home/user/proj", "dir")
    listing = sh(api, box, "cd ~/proj && find . | sort && stat -c %U src/pkg/deep.txt")
    assert listing.split() == [
        ".", "./empty", "./link", "./src", "./src/main.py", "./src/pkg", "./src/pkg/deep.txt",
        "user",
    ]  # fmt: skip
    again = api.put(url(box, "/tar"), params={"path": "proj"}, content=body)
    assert (again.status_code, again.json()["code"]) == (409, "file_exists")
    resp = api.get(url(box, "/tar"), params={"path": "proj"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(names["src/pkg/deep.txt"]).read() == b"deep"  # type: ignore[union-attr]
    assert names["link"].issym() and names["link"].linkname == "src/main.py"
    replaced = api.put(
        url(box, "/tar"),
        params={"path": "proj", "overwrite": "true"},
        content=tar_bytes([("only.txt", b"1", tarfile.REGTYPE, "")]),
    )
    assert replaced.status_code == 200, replaced.text
    assert sh(api, box, "ls -A ~/proj; ls -A ~ | grep -c sandbank-tmp || true").split() == [
        "only.txt",
        "0",
    ]
    for path, status, code in (("/nope", 404, "file_not_found"), ("/etc/hostname", 400, None)):
        resp = api.get(url(box, "/tar"), params={"path": path})
        assert resp.status_code == status, resp.text
        assert code is None or resp.json()["code"] == code


@pytest.mark.parametrize(
    ("member", "what"),
    [
        (("/etc/evil", b"x", tarfile.REGTYPE, ""), "absolute"),
        (("../evil", b"x", tarfile.REGTYPE, ""), ".."),
        (("out", None, tarfile.SYMTYPE, "/etc"), "outside"),
        (("up", None, tarfile.SYMTYPE, "../../etc"), "outside"),
        (("hard", None, tarfile.LNKTYPE, "/etc/shadow"), "absolute"),
        (("dev", None, tarfile.CHRTYPE, ""), "device"),
    ],
)
def test_archive_escapes_are_refused(
    api: httpx.Client, box: dict[str, Any], member: tuple[str, bytes | None, bytes, str], what: str
) -> None:
    body = tar_bytes([("fine.txt", b"ok", tarfile.REGTYPE, ""), member])
    resp = api.put(url(box, "/tar"), params={"path": "/tmp/escape"}, content=body)
    assert (resp.status_code, resp.json()["code"]) == (400, "invalid_path"), resp.text
    assert what in resp.json()["message"]
    assert sh(api, box, "ls -A /tmp | grep -c escape; ls /evil /home/evil 2>&1 | wc -l") == "0\n2\n"


def test_not_a_tar_and_file_onto_directory(api: httpx.Client, box: dict[str, Any]) -> None:
    resp = api.put(url(box, "/tar"), params={"path": "junk"}, content=b"no tar here" * 100)
    assert (resp.status_code, resp.json()["code"]) == (400, "bad_request")
    assert "tar" in resp.json()["message"]
    api.post(url(box, "/mkdir"), json={"path": "adir"})
    resp = api.put(url(box), params={"path": "adir"}, content=b"x" * 1000)
    assert (resp.status_code, resp.json()["code"]) == (400, "is_a_directory")
    resp = api.put(url(box, "/tar"), params={"path": "adir/../.bashrc"}, content=tar_bytes([]))
    assert (resp.status_code, resp.json()["code"]) == (409, "file_exists")


def test_write_files_batch(api: httpx.Client, box: dict[str, Any]) -> None:
    body = tar_bytes(
        [
            ("/tmp/batch/a.txt", b"A", tarfile.REGTYPE, ""),
            ("batch/b.txt", b"BB", tarfile.REGTYPE, ""),
        ]
    )
    resp = api.post(url(box, "/batch"), content=body)
    assert resp.status_code == 200, resp.text
    assert [(e["path"], e["size"]) for e in resp.json()["entries"]] == [
        ("/tmp/batch/a.txt", 1),
        ("/home/user/batch/b.txt", 2),
    ]
    bad = tar_bytes(
        [("/tmp/batch2/c.txt", b"C", tarfile.REGTYPE, ""), ("/etc", b"x", tarfile.REGTYPE, "")]
    )
    resp = api.post(url(box, "/batch"), content=bad)
    assert (resp.status_code, resp.json()["code"]) == (400, "is_a_directory")
    assert resp.json()["message"].startswith("/etc:")
    assert sh(api, box, "ls /tmp/batch2 2>&1 | wc -l; cat /tmp/batch/a.txt") == "1\nA"
    resp = api.post(url(box, "/batch"), content=tar_bytes([]))
    assert resp.status_code == 400 and "no files" in resp.json()["message"]


def test_chmod_chown_find(api: httpx.Client, box: dict[str, Any]) -> None:
    sh(api, box, "mkdir -p ~/f/a/b && touch ~/f/x.py ~/f/a/y.py ~/f/a/b/z.py ~/f/a/b/w.md")
    resp = api.post(url(box, "/chmod"), json={"path": "f/x.py", "mode": 0o700})
    assert resp.status_code == 200 and resp.json()["permissions"] == "rwx------"
    assert api.post(url(box, "/chmod"), json={"path": "f/x.py", "mode": 0o10000}).status_code == 422
    resp = api.post(url(box, "/chmod"), json={"path": "f/none", "mode": 0o600})
    assert resp.status_code == 404
    resp = api.post(
        url(box, "/chown"),
        params={"user": "root"},
        json={"path": "/home/user/f", "owner": "root", "group": 0, "recursive": True},
    )
    assert resp.status_code == 200 and resp.json()["owner"] == "root", resp.text
    assert sh(api, box, "stat -c %U:%G ~/f/a/b/z.py") == "root:root\n"
    resp = api.post(url(box, "/chown"), json={"path": "f", "owner": "nobody-here"})
    assert (resp.status_code, resp.json()["code"]) == (400, "bad_request")
    found = api.get(url(box, "/find"), params={"path": "f", "pattern": "**/*.py"})
    assert [e["path"] for e in found.json()["entries"]] == [
        "/home/user/f/a/b/z.py",
        "/home/user/f/a/y.py",
        "/home/user/f/x.py",
    ]
    top = api.get(url(box, "/find"), params={"path": "f", "pattern": "*"}).json()
    assert [e["name"] for e in top["entries"]] == ["a", "x.py"]
    over = api.get(url(box, "/find"), params={"path": "f", "pattern": "**", "limit": 3})
    assert (over.status_code, over.json()["code"]) == (413, "payload_too_large")
    assert "more than 3" in over.json()["message"]
    assert (
        api.get(url(box, "/find"), params={"path": "f", "pattern": "*", "limit": 0}).status_code
        == 422
    )
    assert api.get(url(box, "/find"), params={"path": "nope", "pattern": "*"}).status_code == 404


def test_text_reads(api: httpx.Client, box: dict[str, Any]) -> None:
    api.put(url(box), params={"path": "t.txt"}, content="h\u00e9llo\n".encode())
    api.put(url(box), params={"path": "b.bin"}, content=b"abc\xff\xfe\x00")
    resp = api.get(url(box), params={"path": "t.txt", "format": "text"})
    assert resp.status_code == 200 and resp.text == "h\u00e9llo\n"
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    resp = api.get(url(box), params={"path": "b.bin", "format": "text", "encoding": "utf-8"})
    assert (resp.status_code, resp.json()["code"]) == (400, "not_text")
    assert "byte 3" in resp.json()["message"] and "b.bin" in resp.json()["message"]
    resp = api.get(url(box), params={"path": "b.bin", "format": "text", "encoding": "latin-1"})
    assert resp.status_code == 200 and resp.headers["content-type"].endswith("iso8859-1")
    resp = api.get(url(box), params={"path": "t.txt", "format": "text", "encoding": "klingon"})
    assert (resp.status_code, resp.json()["code"]) == (422, "invalid_request")
    resp = api.get(url(box), params={"path": "t.txt", "encoding": "utf-8"})
    assert resp.status_code == 422


def test_watch_streams_events(
    server: ServerProcess, api: httpx.Client, box: dict[str, Any]
) -> None:
    sh(api, box, "mkdir -p ~/w/sub")
    missing = api.get(url(box, "/watch"), params={"path": "w/none"})
    assert (missing.status_code, missing.json()["code"]) == (404, "file_not_found")
    not_dir = api.get(url(box, "/watch"), params={"path": ".bashrc"})
    assert (not_dir.status_code, not_dir.json()["code"]) == (400, "not_a_directory")
    lines: list[dict[str, Any]] = []
    started = threading.Event()
    stop = threading.Event()

    def follow() -> None:
        with (
            server.client() as client,
            client.stream(
                "GET", url(box, "/watch"), params={"path": "w", "recursive": "true"}
            ) as resp,
        ):
            assert resp.status_code == 200
            for line in resp.iter_lines():
                lines.append(json.loads(line))
                started.set()
                if stop.is_set() or lines[-1]["event"] == "end":
                    return

    watcher = threading.Thread(target=follow)
    watcher.start()
    assert started.wait(10)
    assert _inotify_fds(api, box) == 1
    api.put(url(box), params={"path": "w/new.txt"}, content=b"x")
    api.post(url(box, "/chmod"), json={"path": "w/new.txt", "mode": 0o600})
    script = (
        "mkdir -p ~/w/later/deeper && sleep 0.2 && echo y > ~/w/later/deeper/f && "
        "mv ~/w/new.txt ~/w/renamed.txt && echo z >> ~/w/sub/g && rm ~/w/renamed.txt"
    )
    sh(api, box, script)
    time.sleep(0.3)
    stop.set()
    sh(api, box, "touch ~/w/last")  # wakes the reader, which then hangs up
    watcher.join(10)
    assert not watcher.is_alive()
    assert lines[0] == {"event": "start", "path": "/home/user/w"}
    seen = [(e["type"], e["name"], e["is_dir"]) for e in lines if e["event"] == "fs"]
    for want in [
        ("create", "new.txt", False),
        ("chmod", "new.txt", False),
        ("rename", "new.txt", False),
        ("create", "renamed.txt", False),
        ("create", "later", True),
        ("create", "later/deeper/f", False),
        ("write", "later/deeper/f", False),
        ("create", "sub/g", False),
        ("write", "sub/g", False),
        ("remove", "renamed.txt", False),
    ]:
        assert want in seen, (want, seen)
    # The watch ended with the client: the agent holds no inotify instance any more.
    time.sleep(0.5)
    assert _inotify_fds(api, box) == 0


def _inotify_fds(api: httpx.Client, box: dict[str, Any]) -> int:
    """inotify instances the agent (PID 1 of the sandbox) holds open."""
    count = "ls -l /proc/1/fd | grep -c anon_inode:inotify || true"
    return int(sh(api, box, count, user="root"))


def test_watch_ends_when_the_directory_goes(
    server: ServerProcess, api: httpx.Client, box: dict[str, Any]
) -> None:
    sh(api, box, "mkdir -p /tmp/gone")
    with (
        server.client() as client,
        client.stream("GET", url(box, "/watch"), params={"path": "/tmp/gone"}) as resp,
    ):
        lines = resp.iter_lines()
        assert json.loads(next(lines))["event"] == "start"
        sh(api, box, "rmdir /tmp/gone")
        events = [json.loads(line) for line in lines]
    assert events[-1]["event"] == "end" and "removed" in events[-1]["reason"]


# -- big transfers and cut uploads ---------------------------------------------------


def _pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _tar_stream(size: int, digest: Any) -> Iterator[bytes]:
    """A tar of one ``size``-byte file under big/, generated on the fly."""
    info = tarfile.TarInfo("big/data.bin")
    info.size = size
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    block = os.urandom(1 << 20)
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        digest.update(chunk)
        sent += len(chunk)
        yield chunk
    yield b"\0" * (-size % 512) + b"\0" * 1024


def test_large_directory_streams_both_ways(
    server: ServerProcess, api: httpx.Client, box: dict[str, Any]
) -> None:
    size = 300 * 1024 * 1024
    before = _status(_pid(server))
    sent = hashlib.sha256()
    resp = api.put(
        url(box, "/tar"),
        params={"path": "/tmp/bigdir"},
        content=_tar_stream(size, sent),
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    got = hashlib.sha256()
    with api.stream("GET", url(box, "/tar"), params={"path": "/tmp/bigdir"}, timeout=300) as stream:
        assert stream.status_code == 200
        reader = _ChunkReader(stream.iter_bytes())
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                if member.isreg():
                    source = tar.extractfile(member)
                    while chunk := source.read(1 << 20):
                        got.update(chunk)
    assert got.hexdigest() == sent.hexdigest()
    after = _status(_pid(server))
    # Neither direction held the data in the server: its peak and current
    # resident size grew by far less than the 300 MB that went through.
    assert after["VmHWM"] - before["VmHWM"] < 64 * 1024, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 64 * 1024, (before, after)
    sh(api, box, "rm -rf /tmp/bigdir")


class _ChunkReader:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        out, self._buf = (self._buf, b"") if size < 0 else (self._buf[:size], self._buf[size:])
        return out


def _cut_upload(server: ServerProcess, path: str, head: bytes, during: Any) -> None:
    """Send a chunked PUT of ``head`` and a few more chunks, call ``during``, hang up."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        request = (
            f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {server.api_key}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        sock.sendall(request)
        for _ in range(8):
            sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        time.sleep(0.5)
        during()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_client_gone_mid_upload_leaves_nothing(
    server: ServerProcess, api: httpx.Client, box: dict[str, Any], kind: str
) -> None:
    target = f"/tmp/cut-{kind}"
    if kind == "file":
        path, head = f"{url(box)}?path={target}", os.urandom(256 * 1024)
    else:
        info = tarfile.TarInfo("inside.bin")
        info.size = 64 * 1024 * 1024
        path = f"{url(box, '/tar')}?path={target}"
        head = info.tobuf(format=tarfile.PAX_FORMAT) + os.urandom(256 * 1024 - 1024)

    def partial_is_there() -> None:
        # The data is on its way into the sandbox, beside the target path.
        assert sh(api, box, "ls -A /tmp | grep cut-").startswith(".cut-")

    _cut_upload(server, path, head, partial_is_there)
    deadline = time.monotonic() + 10
    while True:
        left = sh(api, box, "ls -A /tmp | grep -c cut- || true").strip()
        if left == "0" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == "0", sh(api, box, "ls -la /tmp")
