"""Host-independent pieces of the Linux runtime: process spawning, the template
store and recipe, mirror discovery, the ownership shift, the agent's lib dir."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
from pathlib import Path

import pytest

from sandbank.errors import RuntimeFailure, TemplateNotFound, ValidationFailed
from sandbank.runtime import _proc
from sandbank.runtime.linux import agentlib, customize
from sandbank.runtime.linux.layout import SandboxRecord, check_id
from sandbank.runtime.templates import TemplateStore
from sandbank.runtime.templates.base import host_mirror, installed_packages
from sandbank.runtime.templates.recipe import BASE, RECIPES
from sandbank.runtime.templates.shift import caps_v3, shift_tree

# -- _proc ---------------------------------------------------------------------


async def test_proc_runs_with_an_explicit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "leak")
    result = await _proc.run(["env"])
    assert "SECRET_TOKEN" not in result.text
    assert "PATH=" in result.text
    result = await _proc.run(["env"], env={"ONLY": "this"})
    assert result.text.strip() == "ONLY=this"


async def test_proc_failure_carries_stderr() -> None:
    with pytest.raises(RuntimeFailure) as info:
        await _proc.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert "boom" in info.value.message
    assert info.value.details["exit_code"] == 3
    result = await _proc.run(["sh", "-c", "exit 3"], check=False)
    assert result.returncode == 3


async def test_proc_timeout_kills() -> None:
    with pytest.raises(RuntimeFailure, match="timed out"):
        await _proc.run(["sleep", "30"], timeout=0.2)


async def test_proc_missing_binary() -> None:
    with pytest.raises(RuntimeFailure, match="cannot run"):
        await _proc.run(["/nonexistent/binary"])


async def test_proc_streams_lines() -> None:
    lines: list[str] = []
    result = await _proc.run(["sh", "-c", "echo one; echo two >&2"], on_line=lines.append)
    assert sorted(lines) == ["one", "two"]
    assert b"one" in result.stdout


async def test_proc_output_to_file(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    with open(log, "ab") as fh:
        await _proc.run(["sh", "-c", "echo out; echo err >&2"], output=fh)
    assert log.read_text().split() == ["out", "err"]


# -- ids and records ---------------------------------------------------------------


def test_check_id() -> None:
    assert check_id("abc123") == "abc123"
    for bad in ("", "..", "a/b", "../x", "x" * 65, "-x", "a b"):
        with pytest.raises(ValidationFailed):
            check_id(bad)


def test_record_roundtrip(tmp_path: Path) -> None:
    rec = SandboxRecord("a", "/x/sandbank/a", "/t/rootfs", "/usr/sbin/runc", 1, 512, 64, 1.0)
    rec.save(tmp_path / "runtime.json")
    assert SandboxRecord.load(tmp_path / "runtime.json") == rec
    assert SandboxRecord.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert SandboxRecord.load(tmp_path / "bad.json") is None


def test_record_of_an_older_server_still_loads(tmp_path: Path) -> None:
    old = {
        "id": "a", "cgroups_path": "/x/sandbank/a", "lower": "/t", "oci_binary": "runc",
        "disk_gb": 1, "memory_mb": 512, "pids_limit": 64, "created_at": 1.0,
    }  # fmt: skip
    (tmp_path / "runtime.json").write_text(json.dumps(old))
    rec = SandboxRecord.load(tmp_path / "runtime.json")
    assert rec is not None and (rec.vcpu, rec.hostname) == (0.0, "")
    del old["cgroups_path"]
    (tmp_path / "runtime.json").write_text(json.dumps(old))
    assert SandboxRecord.load(tmp_path / "runtime.json") is None


def test_hostname_and_cpuset_parsing() -> None:
    assert customize.check_hostname("a-b.c9") == "a-b.c9"
    for bad in ("", "-a", "a-", "a b", "a..b", "x" * 64 + ".y", "a_b"):
        with pytest.raises(ValidationFailed):
            customize.check_hostname(bad)
    assert customize.parse_cpus("0-2,5\n") == [0, 1, 2, 5]
    assert customize.parse_cpus("") == customize.parse_cpus(None) == []


def test_cpusets_are_handed_out_in_turn_and_kept_on_resize() -> None:
    spread = customize.CpuSpread([0, 1, 2, 3])
    assert [spread.pick(1) for _ in range(5)] == ["0", "1", "2", "3", "0"]
    assert spread.pick(2) == "1,2"
    assert spread.pick(2, current="3") == "0,3"  # grows from the CPU it had
    assert spread.pick(1, current="2-3") == "2"
    assert spread.pick(16) == "0,1,2,3"


# -- mirror discovery --------------------------------------------------------------


def test_host_mirror_deb822_skips_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (tmp_path / "sources.list.d/nodesource.sources.disabled").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: bookworm\n"
    )
    assert host_mirror("bookworm", tmp_path) == "http://deb.debian.org/debian"
    assert host_mirror("trixie", tmp_path) is None


def test_host_mirror_one_line_style(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb cdrom:[Debian]/ bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian/ bookworm main\n"
    )
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/cloud.list").write_text(
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    assert host_mirror("bookworm", tmp_path) == "https://mirror.example/debian"


def test_host_mirror_respects_enabled_no(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/a.sources").write_text(
        "Types: deb\nEnabled: no\nURIs: http://a.example/debian\nSuites: bookworm\n\n"
        "Types: deb-src\nURIs: http://b.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://c.example/debian\nSuites: bookworm\n"
    )
    assert host_mirror("bookworm", tmp_path) == "http://c.example/debian"


def test_installed_packages(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: sudo\nStatus: install ok installed\nVersion: 1\n\n"
        "Package: git\nStatus: deinstall ok config-files\n\n"
        "Package: curl\nStatus: install ok installed\n"
    )
    assert installed_packages(tmp_path) == {"sudo", "curl"}


# -- recipe and store ----------------------------------------------------------------


def test_recipe_digest_tracks_content() -> None:
    assert BASE.digest() == BASE.digest()
    assert len(BASE.digest()) == 64
    changed = type(BASE)(**{**BASE.__dict__, "packages": (*BASE.packages, "vim")})
    assert changed.digest() != BASE.digest()
    for pkg in ("python3", "python3-pip", "sudo", "curl", "git", "procps", "iproute2",
                "ca-certificates", "locales"):  # fmt: skip
        assert pkg in BASE.packages
    assert (BASE.suite, BASE.variant) == ("bookworm", "minbase")


def _fake_built(root: Path, name: str, digest: str) -> None:
    version = root / name / digest[:16]
    (version / "rootfs/etc").mkdir(parents=True)
    (version / "meta.json").write_text(f'{{"name": "{name}", "recipe_hash": "{digest}"}}')
    (root / name / "current").symlink_to(digest[:16])


async def test_store_unknown_and_unbuilt(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    assert store.info("base").ready is False
    with pytest.raises(TemplateNotFound, match="available: base"):
        await store.ensure("nope")
    with pytest.raises(TemplateNotFound, match="not built"):
        store.lower("base")
    assert store.names() == sorted(RECIPES)


async def test_store_ready_and_stale(tmp_path: Path) -> None:
    _fake_built(tmp_path, "base", BASE.digest())
    store = TemplateStore(tmp_path)
    info = await store.ensure("base")  # up to date: nothing is built
    assert info.ready and info.recipe_hash == BASE.digest()
    assert store.lower("base") == tmp_path / "base" / BASE.digest()[:16] / "rootfs"
    # A template without a recipe (placed by hand) is listed and usable.
    _fake_built(tmp_path, "custom", "f" * 64)
    assert "custom" in store.names()
    assert (await store.ensure("custom")).ready
    stale = TemplateStore(tmp_path / "other")
    _fake_built(tmp_path / "other", "base", "0" * 64)
    assert stale.info("base").ready is False
    # Sandboxes can still start from the stale build while a new one is made.
    assert stale.lower("base").name == "rootfs"


# -- ownership shift -------------------------------------------------------------------


def test_caps_v3() -> None:
    v2 = struct.pack("<IIIII", 0x02000001, 0x2000, 0, 0, 0)
    v3 = caps_v3(v2, 100000)
    assert len(v3) == 24
    assert struct.unpack("<IIIIII", v3) == (0x03000001, 0x2000, 0, 0, 0, 100000)
    assert caps_v3(v3, 5)[-4:] == struct.pack("<I", 5)
    with pytest.raises(ValueError):
        caps_v3(b"\x00" * 20, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_shift_tree(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    sudo = root / "usr/bin/sudo"
    sudo.write_text("x")
    os.chmod(sudo, 0o4755)
    sgid = root / "usr/bin/crontab"
    sgid.write_text("x")
    os.chown(sgid, 0, 42)
    os.chmod(sgid, 0o2755)
    os.link(sudo, root / "usr/bin/sudoedit")
    (root / "bin").symlink_to("usr/bin")
    home = root / "home/user"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    count = shift_tree(root, 100000, 65536)
    assert count == 8  # rootfs, usr, usr/bin, sudo(+link), crontab, bin, home, home/user
    st = os.lstat(sudo)
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    assert stat.S_IMODE(st.st_mode) == 0o4755  # chown cleared it; it was put back
    st = os.lstat(sgid)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (100042, 0o2755)
    assert os.lstat(root / "bin").st_uid == 100000
    assert os.lstat(home).st_uid == 101000
    # Already shifted: refused instead of shifted twice.
    with pytest.raises(ValueError):
        shift_tree(root, 100000, 65536)


# -- agent lib ----------------------------------------------------------------------------


def test_agentlib_assembles_only_what_the_agent_needs(tmp_path: Path) -> None:
    dest = tmp_path / "lib"
    (dest / "sandbank/stale").mkdir(parents=True)
    (dest / "sandbank/stale/old.py").write_text("x")
    files = agentlib.assemble(dest)
    assert "sandbank/__init__.py" in files
    assert (dest / "sandbank/__init__.py").read_bytes() == b""
    for rel in ("sandbank/errors.py", "sandbank/protocol/__init__.py",
                "sandbank/protocol/agent.py", "sandbank/agent/__init__.py"):  # fmt: skip
        assert (dest / rel).is_file()
        assert stat.S_IMODE((dest / rel).stat().st_mode) == 0o644
    assert not (dest / "sandbank/stale").exists()
    assert not (dest / "sandbank/client").exists()
    assert agentlib.assemble(dest) == files  # idempotent


async def test_proc_timeout_kills_the_whole_session(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(RuntimeFailure, match="timed out"):
        await _proc.run(["sh", "-c", script], timeout=0.5, new_session=True)
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # A killed child of a killed shell is reaped by init; give it a moment.
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the grandchild survived the timeout")


# -- loop devices -----------------------------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"), reason="needs root and loop"
)
def test_loop_devices_are_only_detached_from_their_own_image(tmp_path: Path) -> None:
    from sandbank.runtime.linux import disk, kernel

    mine, other = tmp_path / "mine.img", tmp_path / "other.img"
    for image in (mine, other):
        with open(image, "wb") as fh:
            fh.truncate(1024 * 1024)
    device, fd = kernel.attach_loop(mine)
    try:
        assert disk.loops_backed_by(mine) == [device]
        # The device number names another image's device now: left alone.
        assert not kernel.detach_loop(device, other)
        assert disk.loops_backed_by(mine) == [device]
        assert disk.loops_backed_by(mine, among=[device]) == [device]
        assert disk.loops_backed_by(other, among=[device]) == []
        assert kernel.detach_loop(device, mine)
    finally:
        os.close(fd)
    # Cleared (autoclear, and asked to) once the last holder let go.
    assert disk.loops_backed_by(mine) == []
    assert disk.loops_backed_by(mine, among=[device]) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"), reason="needs root and loop"
)
async def test_detach_loops_waits_for_a_held_device_to_clear(tmp_path: Path) -> None:
    """Unbound while something still holds it, the device clears at the last
    close; detach_loops waits for that (watching only that device)."""
    from sandbank.runtime.linux import disk, kernel

    image = tmp_path / "held.img"
    with open(image, "wb") as fh:
        fh.truncate(1024 * 1024)
    device, fd = kernel.attach_loop(image)
    assert disk.loops_backed_by(image) == [device]
    asyncio.get_running_loop().call_later(0.1, os.close, fd)
    await disk.detach_loops(image, timeout=5)
    assert disk.loops_backed_by(image) == []


def test_escape_is_the_inverse_of_unescape() -> None:
    from sandbank.runtime.linux import mounts

    odd = "/data/a b\\c\td\ne"
    assert mounts.unescape(mounts.escape(odd)) == odd
    assert " " not in mounts.escape(odd) and "\n" not in mounts.escape(odd)


MOUNTS = """
import os, sys
from pathlib import Path
from sandbank.runtime.linux import kernel, mounts

kernel.mount("none", "/", "", 0x40000 | 0x4000)  # MS_PRIVATE | MS_REC: nothing leaves
base = Path(sys.argv[1])
points = [base / "a b", base / "a b" / "in\\\\side", base / "a bc", base / "other"]
for p in points:
    p.mkdir(exist_ok=True)
    kernel.mount("tmpfs", p, "tmpfs", 0, "size=4k")
found = [m.point for m in mounts.under(base / "a b")]
assert found == [points[1], points[0]], found
assert found == [m.point for m in mounts.under(base / "a b", mounts.table())]
assert mounts.is_mounted(points[2]) and not mounts.is_mounted(base / "a")
print("found")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_under_reads_only_the_lines_it_needs(tmp_path: Path) -> None:
    """Paths with spaces and backslashes, a sibling sharing a prefix, in a
    mount namespace of the test's own."""
    import subprocess
    import sys

    result = subprocess.run(
        ["unshare", "--mount", sys.executable, "-c", MOUNTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "found"
