"""Give a test run a cgroup of its own, so that servers and runtimes it starts
nest their sandboxes under it and the leak check looks only at this run's
cgroups (another run on the same host is none of its business)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own(key: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, where = line.split(":", 2)
        if key in names.split(",") or (key == "" and names == ""):
            return where.removesuffix(" (deleted)")
    return None


def _layout() -> tuple[str, Path]:
    """(the /proc/self/cgroup key the runtime nests by, its hierarchy mount)."""
    if (CGROUP_ROOT / "memory").is_dir():
        return "memory", CGROUP_ROOT / "memory"
    return "", CGROUP_ROOT


class CgroupScope:
    def __init__(self, name: str) -> None:
        self.key, self.mount = _layout()
        own = _own(self.key) or "/"
        self.previous = own
        self.path = f"{own.rstrip('/')}/{name}"

    def enter(self) -> None:
        target = self.mount / self.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        (target / "cgroup.procs").write_text(str(os.getpid()))

    def dirs(self) -> list[Path]:
        """This scope's directory in every mounted hierarchy (runc creates the
        same relative path in each v1 controller)."""
        found = []
        for hierarchy in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()]:
            candidate = hierarchy / self.path.lstrip("/")
            if candidate.is_dir() and (hierarchy / "cgroup.procs").exists():
                found.append(candidate)
        return found

    def sandbox_cgroups(self) -> list[str]:
        found = []
        for scope in self.dirs():
            for holder in scope.rglob("sandbank"):
                found.extend(f"cgroup {child}" for child in holder.iterdir() if child.is_dir())
        return found

    def leave(self) -> None:
        back = self.mount / self.previous.lstrip("/")
        with contextlib.suppress(OSError):
            (back / "cgroup.procs").write_text(str(os.getpid()))
        for scope in self.dirs():
            for dirpath, _, _ in sorted(os.walk(scope), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
