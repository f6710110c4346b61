"""One small interface over the cgroup layouts a host can have.

* v1 ("legacy"), possibly with a cgroup2 mount beside it ("hybrid"): one
  hierarchy per controller (or per co-mounted group), plus named ones such as
  ``name=systemd``. A cgroup exists once per hierarchy, at the same path.
* v2 ("unified"): a single hierarchy at the cgroup root.

The OCI runtime creates the cgroups and writes the first limits; this module
finds them again (possibly from a later server in another cgroup), reads the
kernel's accounting, changes limits of a running sandbox (a write to a cgroup
file, not an ``update`` process), kills what is left inside and removes the
directories. Everything takes a root for the mount table so unit tests can run
against fake trees.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sandbank.runtime.linux import mounts as mount_table

#: v1 controllers runc knows; other mount options (rw, relatime, ...) are not controllers.
V1_CONTROLLERS = frozenset(
    {
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Hierarchy:
    mountpoint: Path
    #: v1 controller names (plus ``name=...`` for named hierarchies); empty for cgroup2.
    controllers: frozenset[str]
    unified: bool = False


@dataclass(frozen=True)
class CgroupLayout:
    """The cgroup hierarchies mounted on this host."""

    hierarchies: tuple[Hierarchy, ...]

    @property
    def version(self) -> int:
        """2 only for a pure unified host; hybrid hosts are driven as v1."""
        return 2 if all(h.unified for h in self.hierarchies) else 1

    @property
    def hybrid(self) -> bool:
        return self.version == 1 and any(h.unified for h in self.hierarchies)

    @classmethod
    def detect(cls, mounts: str | None = None) -> CgroupLayout:
        """Parse a mount table (default: ``/proc/self/mounts``)."""
        table = mount_table.table() if mounts is None else mount_table.parse(mounts)
        found: list[Hierarchy] = []
        for m in table:
            if m.fstype == "cgroup2":
                found.append(Hierarchy(m.point, frozenset(), unified=True))
            elif m.fstype == "cgroup":
                names = {o for o in m.options if o in V1_CONTROLLERS or o.startswith("name=")}
                found.append(Hierarchy(m.point, frozenset(names)))
        if not found:
            raise OSError("no cgroup filesystem is mounted")
        return cls(tuple(found))

    def hierarchy(self, controller: str) -> Hierarchy | None:
        """Where a controller's files live (v1), or the unified hierarchy (v2)."""
        for h in self.hierarchies:
            if self.version == 2 or controller in h.controllers:
                return h
        return None

    def parent_path(self, proc_cgroup: str | None = None) -> str:
        """The server's own cgroup, under which sandboxes are nested.

        On v1 the memory controller's path is used for every controller:
        memory is the limit that matters, and one path for all keeps the
        OCI ``cgroupsPath`` a single string.
        """
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        entries: dict[str, str] = {}
        for line in proc_cgroup.splitlines():
            _, _, rest = line.partition(":")
            names, _, where = rest.partition(":")
            entries[names] = where
            for name in names.split(","):
                entries.setdefault(name, where)
        key = "" if self.version == 2 else "memory"
        found = entries.get(key)
        if found is None:
            raise OSError(f"no {key or 'unified'} entry in /proc/self/cgroup")
        # A process whose cgroup was removed shows " (deleted)"; nest under what is left.
        return found.removesuffix(" (deleted)") or "/"

    def swap_limit_supported(self, parent: str) -> bool:
        """Whether a swap limit can be written; v1 only has it with memsw accounting."""
        mem = self.hierarchy("memory")
        if mem is None:
            return False
        if self.version == 1:
            return (mem.mountpoint / "memory.memsw.limit_in_bytes").exists()
        # The root cgroup has no memory.* files; any child does when swap accounting is on.
        base = _join(mem.mountpoint, parent)
        if parent.strip("/"):
            return (base / "memory.swap.max").exists()
        return True

    def cgroup(self, path: str) -> Cgroup:
        return Cgroup(self, path)


@dataclass(frozen=True)
class Limits:
    """What ``Cgroup.set_limits`` writes: the numbers the OCI config carries at create."""

    cpu_quota: int
    cpu_period: int
    #: A cpuset list ("0-1,3"); None leaves the CPUs as they are.
    cpus: str | None
    memory: int
    #: Cap memory+swap at ``memory`` too, where the kernel accounts swap.
    no_swap: bool
    #: 0: unlimited.
    pids: int


def _join(mountpoint: Path, path: str) -> Path:
    return mountpoint / path.lstrip("/") if path.strip("/") else mountpoint


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, text: str) -> None:
    # No O_CREAT: a control file that is missing must fail, never be created.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_int(path: Path) -> int:
    """A counter or a limit; "max" and v1's page-rounded "unlimited" read as 0."""
    text = _read(path)
    if text == "max":
        return 0
    value = int(text)
    return 0 if value >= 2**62 else value


class Cgroup:
    """One cgroup path, present in every hierarchy of the layout."""

    def __init__(self, layout: CgroupLayout, path: str) -> None:
        self.layout = layout
        self.path = "/" + path.strip("/")

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"

    def dirs(self) -> list[Path]:
        """This cgroup's directory in every hierarchy (existing or not)."""
        return [_join(h.mountpoint, self.path) for h in self.layout.hierarchies]

    def existing(self) -> list[Path]:
        return [d for d in self.dirs() if d.is_dir()]

    def file(self, controller: str, name: str) -> Path:
        h = self.layout.hierarchy(controller)
        if h is None:
            raise FileNotFoundError(f"no {controller} cgroup controller on this host")
        return _join(h.mountpoint, self.path) / name

    # -- accounting --------------------------------------------------------

    def cpu_usage_seconds(self) -> float:
        if self.layout.version == 2:
            for line in _read(self.file("cpu", "cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return 0.0
        return _read_int(self.file("cpuacct", "cpuacct.usage")) / 1e9

    def memory_current(self) -> int:
        name = "memory.current" if self.layout.version == 2 else "memory.usage_in_bytes"
        return _read_int(self.file("memory", name))

    def memory_limit(self) -> int:
        """Bytes; 0 when unlimited."""
        name = "memory.max" if self.layout.version == 2 else "memory.limit_in_bytes"
        return _read_int(self.file("memory", name))

    def pids_current(self) -> int:
        return _read_int(self.file("pids", "pids.current"))

    def pids_max(self) -> int:
        """0 when unlimited."""
        return _read_int(self.file("pids", "pids.max"))

    def cpus(self) -> str | None:
        """The cpuset the sandbox may run on, None without a cpuset controller."""
        try:
            return _read(self.file("cpuset", "cpuset.cpus")) or None
        except FileNotFoundError:
            return None

    # -- control -------------------------------------------------------------

    def set_limits(self, limits: Limits) -> None:
        """Write new limits into the live cgroup, in an order the kernel accepts."""
        v2 = self.layout.version == 2
        if v2:
            _write(self.file("cpu", "cpu.max"), f"{limits.cpu_quota} {limits.cpu_period}")
        else:
            _write(self.file("cpu", "cpu.cfs_period_us"), str(limits.cpu_period))
            _write(self.file("cpu", "cpu.cfs_quota_us"), str(limits.cpu_quota))
        if limits.cpus is not None:
            self.set_cpus(limits.cpus)
        self._set_memory(limits.memory, limits.no_swap)
        _write(self.file("pids", "pids.max"), str(limits.pids) if limits.pids > 0 else "max")

    def set_cpus(self, cpus: str) -> bool:
        """Restrict the cgroup to the CPU list ``cpus``; False without a cpuset controller."""
        cpuset = self._optional("cpuset", "cpuset.cpus")
        if cpuset is None:
            return False
        _write(cpuset, cpus)
        return True

    def _set_memory(self, limit: int, no_swap: bool) -> None:
        if self.layout.version == 2:
            _write(self.file("memory", "memory.max"), str(limit))
            swap = self._optional("memory", "memory.swap.max") if no_swap else None
            if swap is not None:
                _write(swap, "0")
            return
        memory = self.file("memory", "memory.limit_in_bytes")
        memsw = self._optional("memory", "memory.memsw.limit_in_bytes") if no_swap else None
        if memsw is None:
            _write(memory, str(limit))
            return
        # v1 insists on memsw >= memory at every moment: grow memsw first, shrink it last.
        current = self.memory_limit() or 2**63
        order = (memsw, memory) if limit > current else (memory, memsw)
        for path in order:
            _write(path, str(limit))

    def _optional(self, controller: str, name: str) -> Path | None:
        """A control file that only exists with some kernel configurations."""
        try:
            path = self.file(controller, name)
        except FileNotFoundError:
            return None
        return path if path.exists() else None

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def frozen(self) -> bool:
        """Whether the kernel reports every task of this cgroup frozen."""
        if self.layout.version == 2:
            for line in _read(self.file("cpu", "cgroup.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "frozen":
                    return value.strip() == "1"
            return False
        return _read(self.file("freezer", "freezer.state")).strip() == "FROZEN"

    async def freeze_wait(self, timeout: float = 5.0) -> bool:
        """Freeze and wait until the kernel reports FROZEN; False on timeout."""
        self.freeze()
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while not self.frozen():
            if time.monotonic() >= deadline:
                return False
            if self.layout.version == 1:
                # v1 moves FREEZING -> FROZEN when the state is written again.
                with contextlib.suppress(OSError):
                    self.freeze()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        return True

    def _set_frozen(self, frozen: bool) -> None:
        if self.layout.version == 2:
            self.file("cpu", "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            self.file("freezer", "freezer.state").write_text("FROZEN" if frozen else "THAWED")

    def procs(self) -> set[int]:
        """Every process in this cgroup or below it, in any hierarchy."""
        pids: set[int] = set()
        for top in self.existing():
            for dirpath, _dirs, _files in os.walk(top):
                with contextlib.suppress(OSError):
                    text = (Path(dirpath) / "cgroup.procs").read_text()
                    pids.update(int(p) for p in text.split())
        return pids

    async def kill_all(self, timeout: float = 5.0) -> set[int]:
        """SIGKILL everything inside until it is empty; returns what survived."""
        if self.layout.version == 2:
            kill_file = self.file("cpu", "cgroup.kill")
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            pids = self.procs()
            if not pids or time.monotonic() >= deadline:
                return pids
            # Frozen tasks cannot fork while we are killing them; SIGKILL still lands.
            frozen = False
            with contextlib.suppress(OSError):
                self.freeze()
                frozen = True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if frozen:
                with contextlib.suppress(OSError):
                    self.thaw()
            # Killed processes are gone from the cgroup within a millisecond or
            # two; look again soon, then less and less often.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def remove(self, timeout: float = 5.0) -> list[Path]:
        """rmdir this cgroup (and any children) in every hierarchy; returns what remains.

        A cgroup whose last task just died can report EBUSY for a moment, so
        busy directories are retried until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            left: list[Path] = []
            for top in self.existing():
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    try:
                        os.rmdir(dirpath)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                            raise
                        left.append(Path(dirpath))
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.05)
