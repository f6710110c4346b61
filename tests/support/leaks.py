"""Find anything of a sandbox left on the host under a test root."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def _cgroups() -> list[str]:
    found = []
    for controller in ("memory", "pids", "cpu", "unified"):
        base = CGROUP_ROOT / controller
        if not base.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(base):
            if os.path.basename(dirpath) == "sandbank":
                found.extend(f"cgroup {dirpath}/{d}" for d in dirnames)
                dirnames.clear()
            elif dirpath.count("/") - str(base).count("/") > 4:
                dirnames.clear()
    return found


def leftovers(root: Path) -> list[str]:
    """Every mount, agent process, loop device, sandbox dir and sandbank
    cgroup that exists now under ``root``."""
    return (
        _mounts_under(root)
        + _agents_under(root)
        + _loops_under(root)
        + _sandbox_dirs(root)
        + _cgroups()
    )
