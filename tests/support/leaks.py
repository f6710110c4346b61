"""Find anything of a sandbox left on the host under a test root."""

from __future__ import annotations

import os
from pathlib import Path


def _mounts_under(root: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mount_point = line.split()[4]
            if mount_point.startswith(str(root) + "/") and "/templates" not in mount_point:
                found.append(f"mount {mount_point}")
    return found


def _agents_under(root: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"sandbank.agent" not in cmdline:
                continue
            proc_root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if proc_root.startswith(str(root)):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"process {pid} {command[:80]}")
    return found


def _loops_under(root: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            target = backing.read_text().strip()
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(f"loop device {backing.parts[3]} -> {target}")
    return found


def _sandbox_dirs(root: Path) -> list[str]:
    dirs = [*root.glob("sandboxes/*"), *root.glob("*/sandboxes/*")]
    return [f"sandbox dir {d}" for d in dirs if d.is_dir()]


def leftovers(root: Path, cgroups: list[str] | None = None) -> list[str]:
    """Every mount, agent process, loop device and sandbox dir that exists now
    under ``root``, plus the sandbox cgroups given (see cgroup_scope)."""
    return (
        _mounts_under(root)
        + _agents_under(root)
        + _loops_under(root)
        + _sandbox_dirs(root)
        + list(cgroups or [])
    )
