"""cgroups.py against fake cgroupfs trees: v1/hybrid and unified v2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandbank.runtime.linux.cgroup_host import SERVER_LEAF, favors_dynmods, make_room
from sandbank.runtime.linux.cgroups import CgroupLayout, Limits

V1_CONTROLLERS = ["cpu", "cpuacct", "memory", "pids", "freezer", "systemd"]
SANDBOX = "/srv/abc/sandbank/sbx1"


def v1_mounts(root: Path) -> str:
    lines = [f"tmpfs {root} tmpfs rw,nosuid 0 0"]
    for c in V1_CONTROLLERS:
        opt = "xattr,name=systemd" if c == "systemd" else c
        lines.append(f"cgroup {root / c} cgroup rw,nosuid,nodev,noexec,relatime,{opt} 0 0")
    lines.append(f"cgroup2 {root / 'unified'} cgroup2 rw,nsdelegate 0 0")
    lines.append("proc /proc proc rw 0 0")
    return "\n".join(lines) + "\n"


def write(base: Path, files: dict[str, str]) -> None:
    base.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (base / name).write_text(text)


@pytest.fixture
def v1(tmp_path: Path) -> tuple[CgroupLayout, Path]:
    root = tmp_path / "cg"
    for c in [*V1_CONTROLLERS, "unified"]:
        (root / c).mkdir(parents=True)
    rel = SANDBOX.lstrip("/")
    write(root / "cpuacct" / rel, {"cpuacct.usage": "1500000000\n", "cgroup.procs": ""})
    write(
        root / "memory" / rel,
        {
            "memory.usage_in_bytes": "1048576\n",
            "memory.limit_in_bytes": "536870912\n",
            "cgroup.procs": "",
        },
    )
    write(root / "pids" / rel, {"pids.current": "3\n", "pids.max": "64\n", "cgroup.procs": ""})
    write(root / "freezer" / rel, {"freezer.state": "THAWED\n", "cgroup.procs": ""})
    for c in ("cpu", "systemd", "unified"):
        write(root / c / rel, {"cgroup.procs": ""})
    return CgroupLayout.detect(v1_mounts(root)), root


@pytest.fixture
def v2(tmp_path: Path) -> tuple[CgroupLayout, Path]:
    root = tmp_path / "cg2"
    write(root, {"cgroup.controllers": "cpu memory pids\n"})
    write(
        root / SANDBOX.lstrip("/"),
        {
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            "memory.current": "2097152\n",
            "memory.max": "max\n",
            "pids.current": "5\n",
            "pids.max": "max\n",
            "cgroup.freeze": "0\n",
            "cgroup.procs": "",
        },
    )
    mounts = f"cgroup2 {root} cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
    return CgroupLayout.detect(mounts), root


def test_detect_hybrid(v1: tuple[CgroupLayout, Path]) -> None:
    layout, root = v1
    assert layout.version == 1
    assert layout.hybrid
    assert layout.hierarchy("memory") is not None
    assert layout.hierarchy("memory").mountpoint == root / "memory"  # type: ignore[union-attr]
    assert layout.hierarchy("rdma") is None
    # Named and unified hierarchies count: runc puts the container in them too.
    assert len(layout.cgroup(SANDBOX).dirs()) == len(V1_CONTROLLERS) + 1


def test_detect_pure_v1_and_v2(v2: tuple[CgroupLayout, Path], tmp_path: Path) -> None:
    layout, root = v2
    assert layout.version == 2
    assert not layout.hybrid
    assert layout.hierarchy("memory").mountpoint == root  # type: ignore[union-attr]
    pure_v1 = CgroupLayout.detect(f"cgroup {tmp_path}/memory cgroup rw,memory 0 0\n")
    assert pure_v1.version == 1 and not pure_v1.hybrid


def test_detect_without_cgroups_fails() -> None:
    with pytest.raises(OSError):
        CgroupLayout.detect("proc /proc proc rw 0 0\n")


def test_parent_path_uses_memory_on_v1(v1: tuple[CgroupLayout, Path]) -> None:
    layout, _ = v1
    text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n"
    assert layout.parent_path(text) == "/process_api/abc"


def test_parent_path_v2(v2: tuple[CgroupLayout, Path]) -> None:
    layout, _ = v2
    assert layout.parent_path("0::/system.slice/sandbank.service\n") == (
        "/system.slice/sandbank.service"
    )
    assert layout.parent_path("0::/\n") == "/"
    assert layout.parent_path("0::/gone (deleted)\n") == "/gone"


def test_accounting_v1(v1: tuple[CgroupLayout, Path]) -> None:
    cg = v1[0].cgroup(SANDBOX)
    assert cg.cpu_usage_seconds() == pytest.approx(1.5)
    assert cg.memory_current() == 1048576
    assert cg.memory_limit() == 536870912
    assert cg.pids_current() == 3
    assert cg.pids_max() == 64


def test_accounting_v2(v2: tuple[CgroupLayout, Path]) -> None:
    cg = v2[0].cgroup(SANDBOX)
    assert cg.cpu_usage_seconds() == pytest.approx(2.5)
    assert cg.memory_current() == 2097152
    assert cg.memory_limit() == 0  # "max"
    assert cg.pids_current() == 5
    assert cg.pids_max() == 0


def test_v1_unlimited_memory_reads_as_zero(v1: tuple[CgroupLayout, Path]) -> None:
    layout, root = v1
    (root / "memory" / SANDBOX.lstrip("/") / "memory.limit_in_bytes").write_text(
        "9223372036854771712\n"
    )
    assert layout.cgroup(SANDBOX).memory_limit() == 0


class Recorder:
    """Records the order in which control files are written."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import sandbank.runtime.linux.cgroups as mod

        self.writes: list[tuple[str, str]] = []
        real = mod._write

        def spy(path: Path, text: str) -> None:
            real(path, text)
            self.writes.append((path.name, text))

        monkeypatch.setattr(mod, "_write", spy)


LIMITS = Limits(
    cpu_quota=150000, cpu_period=100000, cpus="0,1", memory=1 << 30, no_swap=True, pids=0
)


def test_set_limits_v1_orders_memsw_around_the_limit(
    v1: tuple[CgroupLayout, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, root = v1
    rel = SANDBOX.lstrip("/")
    write(root / "cpu" / rel, {"cpu.cfs_quota_us": "100000\n", "cpu.cfs_period_us": "100000\n"})
    write(root / "memory" / rel, {"memory.memsw.limit_in_bytes": "536870912\n"})
    write(root / "pids" / rel, {"pids.max": "64\n"})
    rec = Recorder(monkeypatch)
    cg = layout.cgroup(SANDBOX)
    cg.set_limits(LIMITS)
    # Growing: memsw first. No cpuset hierarchy on this host: the CPUs are left alone.
    assert rec.writes == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "150000"),
        ("memory.memsw.limit_in_bytes", str(1 << 30)),
        ("memory.limit_in_bytes", str(1 << 30)),
        ("pids.max", "max"),
    ]
    assert cg.memory_limit() == 1 << 30 and cg.cpus() is None
    rec.writes.clear()
    cg.set_limits(Limits(1000, 100000, None, 1 << 20, True, 7))
    assert [name for name, _ in rec.writes][2:4] == [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
    ]
    assert cg.pids_max() == 7


def test_set_limits_v2(v2: tuple[CgroupLayout, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    layout, root = v2
    write(
        root / SANDBOX.lstrip("/"),
        {"cpu.max": "100000 100000\n", "cpuset.cpus": "0\n", "memory.swap.max": "0\n"},
    )
    rec = Recorder(monkeypatch)
    cg = layout.cgroup(SANDBOX)
    assert cg.cpus() == "0"
    cg.set_limits(LIMITS)
    assert rec.writes == [
        ("cpu.max", "150000 100000"),
        ("cpuset.cpus", "0,1"),
        ("memory.max", str(1 << 30)),
        ("memory.swap.max", "0"),
        ("pids.max", "max"),
    ]


def test_set_limits_never_creates_a_control_file(v1: tuple[CgroupLayout, Path]) -> None:
    layout, _ = v1
    with pytest.raises(FileNotFoundError):
        layout.cgroup(SANDBOX).set_limits(LIMITS)  # no cpu.cfs_* files in this tree


def test_freeze_thaw(v1: tuple[CgroupLayout, Path], v2: tuple[CgroupLayout, Path]) -> None:
    layout1, root1 = v1
    state = root1 / "freezer" / SANDBOX.lstrip("/") / "freezer.state"
    layout1.cgroup(SANDBOX).freeze()
    assert state.read_text() == "FROZEN"
    layout1.cgroup(SANDBOX).thaw()
    assert state.read_text() == "THAWED"
    layout2, root2 = v2
    freeze = root2 / SANDBOX.lstrip("/") / "cgroup.freeze"
    layout2.cgroup(SANDBOX).freeze()
    assert freeze.read_text() == "1"
    layout2.cgroup(SANDBOX).thaw()
    assert freeze.read_text() == "0"


def test_procs_is_the_union_over_hierarchies_and_children(v1: tuple[CgroupLayout, Path]) -> None:
    layout, root = v1
    rel = SANDBOX.lstrip("/")
    (root / "memory" / rel / "cgroup.procs").write_text("10\n11\n")
    (root / "pids" / rel / "cgroup.procs").write_text("11\n12\n")
    write(root / "memory" / rel / "child", {"cgroup.procs": "13\n"})
    assert layout.cgroup(SANDBOX).procs() == {10, 11, 12, 13}


@pytest.mark.parametrize("which", ["v1", "v2"])
async def test_kill_all_kills_listed_processes(which: str, request: pytest.FixtureRequest) -> None:
    layout, root = request.getfixturevalue(which)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        base = root / ("memory" if which == "v1" else "") / SANDBOX.lstrip("/")
        (base / "cgroup.procs").write_text(f"{victim.pid}\n")
        if which == "v2":
            (base / "cgroup.kill").write_text("")
        # A fake tree never empties itself: the pid stays listed and is reported.
        survivors = await layout.cgroup(SANDBOX).kill_all(timeout=0.2)
        assert victim.wait(timeout=5) == -9
        assert survivors == {victim.pid}
        if which == "v1":
            freezer = root / "freezer" / SANDBOX.lstrip("/") / "freezer.state"
            assert freezer.read_text() == "THAWED"
        else:
            assert (base / "cgroup.kill").read_text() == "1"
    finally:
        victim.kill()
        victim.wait()


async def test_kill_all_of_empty_cgroup_returns_at_once(v1: tuple[CgroupLayout, Path]) -> None:
    assert await v1[0].cgroup(SANDBOX).kill_all(timeout=5) == set()


@pytest.mark.parametrize("which", ["v1", "v2"])
async def test_remove_every_hierarchy(which: str, tmp_path: Path) -> None:
    # Real cgroupfs directories can be rmdir'ed with their files in them; fake ones
    # only when empty, so this tree has directories only.
    if which == "v1":
        root = tmp_path / "cg"
        mounts = v1_mounts(root)
        tops = [root / c for c in [*V1_CONTROLLERS, "unified"]]
    else:
        root = tmp_path / "cg2"
        mounts = f"cgroup2 {root} cgroup2 rw 0 0\n"
        tops = [root]
    for top in tops:
        (top / SANDBOX.lstrip("/") / "nested").mkdir(parents=True)
    layout = CgroupLayout.detect(mounts)
    cg = layout.cgroup(SANDBOX)
    assert len(cg.existing()) == len(tops)
    assert await cg.remove(timeout=1) == []
    assert cg.existing() == []
    # The parent stays: other sandboxes live there.
    assert all((top / "srv/abc/sandbank").is_dir() for top in tops)
    assert await cg.remove(timeout=1) == []  # idempotent


async def test_remove_reports_busy_dirs(v1: tuple[CgroupLayout, Path]) -> None:
    layout, _ = v1
    left = await layout.cgroup(SANDBOX).remove(timeout=0.1)
    assert left and all(SANDBOX.lstrip("/") in str(p) for p in left)


def test_swap_limit_support(v1: tuple[CgroupLayout, Path], v2: tuple[CgroupLayout, Path]) -> None:
    layout1, root1 = v1
    assert not layout1.swap_limit_supported("/srv/abc")
    (root1 / "memory" / "memory.memsw.limit_in_bytes").write_text("0")
    assert layout1.swap_limit_supported("/srv/abc")
    layout2, root2 = v2
    assert layout2.swap_limit_supported("/")
    assert not layout2.swap_limit_supported("/srv/abc")
    (root2 / "srv/abc/memory.swap.max").write_text("max")
    assert layout2.swap_limit_supported("/srv/abc")


def test_make_room_moves_processes_to_a_leaf(v2: tuple[CgroupLayout, Path]) -> None:
    layout, root = v2
    (root / "srv/abc/cgroup.procs").write_text("4242\n")
    assert make_room(layout, "/srv/abc") == "/srv/abc"
    assert (root / f"srv/abc/{SERVER_LEAF}/cgroup.procs").read_text() == "4242"
    # Started again from inside the leaf: sandboxes still nest beside it.
    assert make_room(layout, f"/srv/abc/{SERVER_LEAF}") == "/srv/abc"
    assert make_room(layout, f"/{SERVER_LEAF}") == "/"


def test_make_room_is_a_noop_on_v1_root_and_empty(
    v1: tuple[CgroupLayout, Path], v2: tuple[CgroupLayout, Path]
) -> None:
    assert make_room(v1[0], "/srv/abc") == "/srv/abc"
    assert make_room(v2[0], "/") == "/"
    (v2[1] / "srv/abc/cgroup.procs").write_text("")
    assert make_room(v2[0], "/srv/abc") == "/srv/abc"


def test_paths_with_spaces_in_mount_table(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    escaped = str(root).replace(" ", "\\040")
    layout = CgroupLayout.detect(f"cgroup2 {escaped} cgroup2 rw 0 0\n")
    assert layout.hierarchies[0].mountpoint == root


def test_favordynmods_on_any_hierarchy(tmp_path: Path) -> None:
    plain = v1_mounts(tmp_path)
    assert not favors_dynmods(plain)
    assert favors_dynmods(plain.replace("cgroup2 rw,nsdelegate", "cgroup2 rw,favordynmods"))
