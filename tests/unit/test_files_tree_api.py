"""The file-tree routes (tar both ways, batches, text reads, chmod/chown, find,
watch) over the ASGI app with the fake runtime's in-memory files."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbank.runtime.fake import FakeRuntime
from sandbank.server.app import create_app
from sandbank.server.settings import Settings

KEY = "sbk_unit_files_tree_key"


@pytest.fixture
async def app_and_api(tmp_path: Path) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(Settings(runtime="fake", data_dir=tmp_path, api_key=KEY, pool_size=0))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client,
    ):
        yield app, client


def _tar(files: dict[str, bytes | None], modes: dict[str, str] | None = None) -> bytes:
    """A tar of ``files`` (None: a directory); ``modes``: sandbank.mode pax fields."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if modes and name in modes:
                info.pax_headers = {"sandbank.mode": modes[name]}
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _names(body: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {
            m.name: (f.read() if (f := tar.extractfile(m)) and m.isreg() else None)
            for m in tar.getmembers()
        }


async def test_tar_batch_text_and_attributes(app_and_api: tuple[Any, httpx.AsyncClient]) -> None:
    _, api = app_and_api
    sid = (await api.post("/v1/sandboxes", json={})).json()["id"]
    files = f"/v1/sandboxes/{sid}/files"
    tree = _tar({"src": None, "src/a.py": b"print(1)\n", "README.md": b"# hi\n"})
    up = await api.put(f"{files}/tar", params={"path": "proj"}, content=tree)
    assert up.status_code == 200, up.text
    assert up.json()["path"] == "/home/user/proj" and up.json()["type"] == "dir"
    again = await api.put(f"{files}/tar", params={"path": "proj"}, content=tree)
    assert again.status_code == 409 and again.json()["code"] == "file_exists"
    replaced = await api.put(f"{files}/tar", params={"path": "proj", "overwrite": "true"},
                             content=_tar({"only.txt": b"1"}))  # fmt: skip
    assert replaced.status_code == 200, replaced.text
    down = await api.get(f"{files}/tar", params={"path": "proj"})
    assert down.status_code == 200 and _names(down.content) == {"only.txt": b"1"}
    await api.put(f"{files}/tar", params={"path": "proj", "overwrite": "true"}, content=tree)
    assert _names((await api.get(f"{files}/tar", params={"path": "/home/user/proj"})).content) == {
        "README.md": b"# hi\n", "src": None, "src/a.py": b"print(1)\n",
    }  # fmt: skip
    escape = await api.put(f"{files}/tar", params={"path": "x"}, content=_tar({"../up": b"1"}))
    assert escape.status_code == 400 and escape.json()["code"] == "invalid_path"
    assert (await api.get(f"{files}/stat", params={"path": "x"})).status_code == 404
    missing = await api.get(f"{files}/tar", params={"path": "nowhere"})
    assert missing.status_code == 404
    garbage = await api.put(f"{files}/tar", params={"path": "y"}, content=b"not a tar")
    assert garbage.status_code == 400

    batch = _tar({"/opt/app/run.sh": b"#!/bin/sh\n", "notes/n.txt": b"\xff\xfe"},
                 modes={"/opt/app/run.sh": "0755"})  # fmt: skip
    wrote = await api.post(f"{files}/batch", content=batch)
    assert wrote.status_code == 200, wrote.text
    entries = wrote.json()["entries"]
    assert [e["path"] for e in entries] == ["/opt/app/run.sh", "/home/user/notes/n.txt"]
    assert entries[0]["permissions"] == "rwxr-xr-x" and entries[1]["mode"] == 0o644
    empty = await api.post(f"{files}/batch", content=_tar({"d": None}))
    assert empty.status_code == 400

    text = await api.get(files, params={"path": "/opt/app/run.sh", "format": "text"})
    assert text.status_code == 200 and text.text == "#!/bin/sh\n"
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    binary = await api.get(files, params={"path": "notes/n.txt", "format": "text"})
    assert binary.status_code == 400 and binary.json()["code"] == "not_text"
    latin = await api.get(files, params={"path": "notes/n.txt", "format": "text",
                                         "encoding": "latin-1"})  # fmt: skip
    assert latin.status_code == 200 and latin.text == "\xff\xfe"

    chmod = await api.post(f"{files}/chmod", json={"path": "proj/src/a.py", "mode": 0o700})
    assert chmod.status_code == 200 and chmod.json()["permissions"] == "rwx------"
    stat = await api.get(f"{files}/stat", params={"path": "proj/src/a.py"})
    assert stat.json()["mode"] == 0o700
    chown = await api.post(f"{files}/chown", json={"path": "proj", "owner": "root",
                                                   "group": 0, "recursive": True})  # fmt: skip
    assert chown.status_code == 200 and (chown.json()["owner"], chown.json()["group"]) == (
        "root", "root",
    )  # fmt: skip
    listed = (await api.get(f"{files}/list", params={"path": "proj/src"})).json()["entries"]
    assert [(e["name"], e["owner"], e["mode"]) for e in listed] == [("a.py", "root", 0o700)]
    unknown = await api.post(f"{files}/chown", json={"path": "proj", "owner": "nobody-here"})
    assert unknown.status_code == 400

    found = await api.get(f"{files}/find", params={"path": "proj", "pattern": "**/*.py"})
    assert [e["path"] for e in found.json()["entries"]] == ["/home/user/proj/src/a.py"]
    top = await api.get(f"{files}/find", params={"path": "proj", "pattern": "*"})
    assert [e["name"] for e in top.json()["entries"]] == ["README.md", "src"]
    many = await api.get(f"{files}/find", params={"path": "proj", "pattern": "**", "limit": 1})
    assert many.status_code == 413 and many.json()["code"] == "payload_too_large"
    on_file = await api.get(f"{files}/find", params={"path": "proj/README.md", "pattern": "*"})
    assert on_file.status_code == 400 and on_file.json()["code"] == "not_a_directory"


async def test_watch_sees_changes_until_the_directory_goes(
    app_and_api: tuple[Any, httpx.AsyncClient],
) -> None:
    app, api = app_and_api
    runtime: FakeRuntime = app.state.services.sandboxes._runtime
    sid = (await api.post("/v1/sandboxes", json={})).json()["id"]
    files = f"/v1/sandboxes/{sid}/files"
    assert (await api.post(f"{files}/mkdir", json={"path": "w"})).status_code in (200, 201)
    missing = await api.get(f"{files}/watch", params={"path": "no-such-dir"})
    assert missing.status_code == 404

    # The test transport hands over a body once it is complete: the watch ends
    # when its directory is removed, and then its lines are read.
    watching = asyncio.create_task(
        api.get(f"{files}/watch", params={"path": "w", "recursive": "true"})
    )
    box = runtime.boxes[sid]
    for _ in range(500):
        if box.__dict__.get("watches"):
            break
        await asyncio.sleep(0.01)
    assert box.__dict__.get("watches") == 1

    async def seen() -> None:
        """Until the watch has looked again after the last change."""
        target = box.__dict__.get("watch_polls", 0) + 2
        while box.__dict__.get("watch_polls", 0) < target:
            await asyncio.sleep(0.005)

    await api.put(files, params={"path": "w/a.txt"}, content=b"one")
    await seen()
    await api.put(files, params={"path": "w/a.txt"}, content=b"two")
    await seen()
    await api.post(f"{files}/chmod", json={"path": "w/a.txt", "mode": 0o600})
    await seen()
    await api.delete(files, params={"path": "w/a.txt"})
    await seen()
    await api.delete(files, params={"path": "w", "recursive": "true"})
    resp = await asyncio.wait_for(watching, timeout=10)
    assert resp.status_code == 200, resp.text
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert lines[0] == {"event": "start", "path": "/home/user/w"}
    assert [(e["event"], e.get("type"), e.get("name")) for e in lines[1:]] == [
        ("fs", "create", "a.txt"), ("fs", "write", "a.txt"), ("fs", "write", "a.txt"),
        ("fs", "chmod", "a.txt"), ("fs", "remove", "a.txt"), ("end", None, None),
    ]  # fmt: skip
    assert box.__dict__["watches"] == 0
