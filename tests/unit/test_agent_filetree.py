"""The agent's file-tree operations (tar both ways, batches, chmod/chown, find,
watch), run for real as a host process and driven through ``AgentClient``."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.errors import (
    BadRequest,
    FileExists,
    FileNotFound,
    InvalidPath,
    NotADirectory,
    NotText,
    PayloadTooLarge,
)
from sandbank.runtime.filetree import WatchEvent
from tests.unit.test_agent import Agent, chunks_of, running_agent


@pytest.fixture(scope="module")
async def agent(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Agent]:
    root = tmp_path_factory.mktemp("agent-tree")
    async with running_agent(root, root / "run" / "agent.sock") as running:
        yield running


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o640
    return info


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_tree_round_trip(agent: Agent) -> None:
    src = agent.home / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_bytes(b"deep")
    (src / "top.bin").write_bytes(os.urandom(300_000))
    (src / "empty").mkdir()
    (src / "link").symlink_to("a/b/f.txt")
    data = await collect(agent.client.read_tar(str(src)))
    entry = await agent.client.write_tar("copy", chunks_of([data[:1000], data[1000:]]))
    dst = Path(entry.path)
    assert entry.type == "dir" and dst == agent.home / "copy"
    assert (dst / "a" / "b" / "f.txt").read_bytes() == b"deep"
    assert (dst / "top.bin").read_bytes() == (src / "top.bin").read_bytes()
    assert (dst / "empty").is_dir() and os.readlink(dst / "link") == "a/b/f.txt"
    with pytest.raises(FileExists, match="overwrite"):
        await agent.client.write_tar("copy", chunks_of([data]))
    await agent.client.write_tar(
        "copy", chunks_of([tar_of([(member("new"), b"x")])]), overwrite=True
    )
    assert sorted(os.listdir(dst)) == ["new"]
    with pytest.raises(NotADirectory):
        await collect(agent.client.read_tar(str(src / "top.bin")))
    with pytest.raises(FileNotFound):
        await collect(agent.client.read_tar("nowhere"))
    assert not [n for n in os.listdir(agent.home) if n.endswith(".sandbank-tmp")]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(member("/etc/evil"), b"x")], "absolute"),
        ([(member("../evil"), b"x")], r"\.\."),
        ([(member("l", tarfile.SYMTYPE, "/etc"), b"")], "outside"),
        ([(member("l", tarfile.SYMTYPE, "../../x"), b"")], "outside"),
        ([(member("h", tarfile.LNKTYPE, "/etc/passwd"), b"")], "absolute"),
        ([(member("h", tarfile.LNKTYPE, "nothere"), b"")], "hard link"),
        ([(member("dev", tarfile.CHRTYPE), b"")], "device"),
        ([(member("fifo", tarfile.FIFOTYPE), b"")], "device"),
    ],
)
async def test_untar_refuses_escapes(
    agent: Agent, members: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    body = tar_of([(member("ok.txt"), b"fine"), *members])
    with pytest.raises(InvalidPath, match=message):
        await agent.client.write_tar("/tmp/escape-target", chunks_of([body]))
    assert not Path("/tmp/escape-target").exists()
    assert not (agent.home.parent / "evil").exists()


async def test_untar_compressed(agent: Agent, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("z/inside.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"gzip!"))
    entry = await agent.client.write_tar(str(tmp_path / "gz"), chunks_of([buf.getvalue()]))
    assert (Path(entry.path) / "z" / "inside.txt").read_bytes() == b"gzip!"


async def test_untar_through_symlink_is_refused(agent: Agent, tmp_path: Path) -> None:
    # A link inside pointing at the root, then a member written through it and up.
    body = tar_of([(member("d", tarfile.SYMTYPE, "."), b""), (member("d/x"), b"ok")])
    entry = await agent.client.write_tar(str(tmp_path / "t1"), chunks_of([body]))
    assert (Path(entry.path) / "x").read_bytes() == b"ok"
    with pytest.raises(BadRequest, match="not a valid tar"):
        await agent.client.write_tar(str(tmp_path / "t2"), chunks_of([b"not a tar" * 200]))
    assert sorted(os.listdir(tmp_path)) == ["t1"]


async def test_cut_upload_leaves_nothing(agent: Agent, tmp_path: Path) -> None:
    body = tar_of([(member("big"), os.urandom(2_000_000))])

    async def cut() -> AsyncIterator[bytes]:
        yield body[:700_000]
        raise RuntimeError("uploader went away")

    with pytest.raises(RuntimeError):
        await agent.client.write_tar(str(tmp_path / "cut"), cut())
    with pytest.raises(RuntimeError):
        await agent.client.write_files(cut())
    await asyncio.sleep(0.3)
    assert os.listdir(tmp_path) == []


async def test_write_files_all_or_nothing(agent: Agent, tmp_path: Path) -> None:
    first = member(str(tmp_path / "one.txt"))
    mode = member("sub/two.txt")
    mode.pax_headers = {"sandbank.mode": "600"}
    entries = await agent.client.write_files(chunks_of([tar_of([(first, b"1"), (mode, b"22")])]))
    assert [e.path for e in entries] == [str(tmp_path / "one.txt"), str(agent.home / "sub/two.txt")]
    assert (tmp_path / "one.txt").read_bytes() == b"1" and entries[1].mode == 0o600
    assert entries[0].mode == 0o644
    (tmp_path / "dir").mkdir()
    bad = tar_of(
        [(member(str(tmp_path / "three.txt")), b"3"), (member(str(tmp_path / "dir")), b"")]
    )
    with pytest.raises(BadRequest, match=r"dir.*is a directory"):
        await agent.client.write_files(chunks_of([bad]))
    assert sorted(os.listdir(tmp_path)) == ["dir", "one.txt"]


async def test_chmod_chown_find(agent: Agent, tmp_path: Path) -> None:
    for rel in ("a.py", "b.txt", "src/c.py", "src/deep/d.py", "src/deep/e.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    entry = await agent.client.chmod(str(tmp_path / "a.py"), 0o700)
    assert entry.mode == 0o700 and (tmp_path / "a.py").stat().st_mode & 0o777 == 0o700
    with pytest.raises(BadRequest):
        await agent.client.chmod(str(tmp_path / "a.py"), 0o17777)
    uid = os.getuid()
    entry = await agent.client.chown(str(tmp_path / "src"), uid, None, recursive=True)
    assert entry.type == "dir"
    with pytest.raises(BadRequest, match="unknown user"):
        await agent.client.chown(str(tmp_path / "src"), "no-such-user", None)
    with pytest.raises(BadRequest, match="unknown group 'no-such-group'"):
        await agent.client.chown(str(tmp_path / "src"), None, "no-such-group")
    entry = await agent.client.chown(str(tmp_path / "src"), str(uid), str(os.getgid()))
    assert entry.type == "dir"

    async def names(pattern: str, limit: int = 100) -> list[str]:
        found = await agent.client.find(str(tmp_path), pattern, limit=limit)
        return [os.path.relpath(e.path, tmp_path) for e in found]

    assert await names("*.py") == ["a.py"]
    assert await names("**/*.py") == ["a.py", "src/c.py", "src/deep/d.py"]
    assert await names("src/*") == ["src/c.py", "src/deep"]
    assert await names("src/**") == ["src/c.py", "src/deep", "src/deep/d.py", "src/deep/e.md"]
    assert await names("[ab].*") == ["a.py", "b.txt"]
    with pytest.raises(PayloadTooLarge, match="more than 2"):
        await names("**", limit=2)
    with pytest.raises(BadRequest):
        await names("/etc/*")


async def test_text_reads(agent: Agent) -> None:
    (agent.home / "t.txt").write_text("h\u00e9llo")
    (agent.home / "b.bin").write_bytes(b"ok" + b"\xff\xfe\x00" * 10)
    got = await collect(agent.client.read_text("t.txt", "utf-8"))
    assert got.decode() == "h\u00e9llo"
    with pytest.raises(NotText, match="byte 2"):
        await collect(agent.client.read_text("b.bin", "utf-8"))
    with pytest.raises(BadRequest, match="unknown text encoding"):
        await collect(agent.client.read_text("t.txt", "no-such-codec"))
    assert len(await collect(agent.client.read_text("b.bin", "latin-1"))) == 32


async def test_watch(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "inner").mkdir(parents=True)
    events: list[WatchEvent] = []
    stream = agent.client.watch(str(tmp_path), recursive=True)

    async def gather() -> None:
        async for event in stream:
            events.append(event)

    task = asyncio.ensure_future(gather())
    await asyncio.sleep(0.3)
    (tmp_path / "f.txt").write_text("x")
    os.chmod(tmp_path / "f.txt", 0o600)
    os.rename(tmp_path / "f.txt", tmp_path / "g.txt")
    (tmp_path / "new" / "deeper").mkdir(parents=True)
    await asyncio.sleep(0.2)
    (tmp_path / "new" / "deeper" / "n.txt").write_text("y")
    (tmp_path / "old" / "o.txt").write_text("z")
    os.unlink(tmp_path / "g.txt")
    os.rename(outside, tmp_path / "moved-in")  # a tree moved in is watched too
    await asyncio.sleep(0.2)
    (tmp_path / "moved-in" / "inner" / "m.txt").write_text("m")
    os.rename(tmp_path / "old", outside)  # a tree moved out is not
    await asyncio.sleep(0.2)
    (outside / "after.txt").write_text("gone")
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = [(e.type, e.name) for e in events if e.kind == "fs"]
    for want in [
        ("create", "f.txt"),
        ("write", "f.txt"),
        ("chmod", "f.txt"),
        ("rename", "f.txt"),
        ("create", "g.txt"),
        ("create", "new"),
        ("create", "new/deeper/n.txt"),
        ("create", "old/o.txt"),
        ("remove", "g.txt"),
        ("create", "moved-in"),
        ("create", "moved-in/inner/m.txt"),
        ("rename", "old"),
    ]:
        assert want in seen, (want, seen)
    assert not [name for _, name in seen if name and "after" in name]
    assert events[0].kind == "start" and events[0].name == str(tmp_path)
    with pytest.raises(FileNotFound):
        await anext(agent.client.watch(str(tmp_path / "missing")))
    with pytest.raises(NotADirectory):
        await anext(agent.client.watch(str(outside / "o.txt")))
    shutil.rmtree(outside)
