"""Find anything of a sandbox left on the host under a test root."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

#: Every data dir a runtime or server of this test process was given
#: (``remember``): their sandboxes' network objects are found by the instance
#: tag in their names, also once the dir itself is gone.
DATA_DIRS: set[Path] = set()


def remember(data_dir: Path) -> Path:
    DATA_DIRS.add(Path(data_dir).absolute())
    return data_dir


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


def _instances(data_dirs: set[Path]) -> dict[str, Path]:
    """The tag ``runtime.linux.network.SandboxNetworks`` derives from a data dir."""
    return {hashlib.sha256(str(d).encode()).hexdigest()[:8]: d for d in data_dirs}


def _run_json(*argv: str) -> object:
    """The JSON a command prints; None if it fails or is not installed (then
    there is nothing of its kind to leak either)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        return None
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def network_leftovers(data_dirs: set[Path]) -> list[str]:
    """Links, nftables ``ifaces`` members and stored domain policies of the
    sandboxes of ``data_dirs``, and the fake internets of this process still
    there. Sandbox links carry the alias ``sandbank:<tag>:<id>``, their
    ``ifaces`` member the same comment."""
    from sandbank.runtime.linux import netrules
    from tests.support import fakenet  # the fake internet's own registry

    tags = tuple(f"sandbank:{tag}:" for tag in _instances(data_dirs))
    found: list[str] = []
    links = _run_json("ip", "-j", "-d", "link", "show")
    for link in links if isinstance(links, list) else []:
        alias = link.get("ifalias") or ""
        if tags and alias.startswith(tags):
            found.append(f"network link {link.get('ifname')} of {alias}")
    listing = _run_json("nft", "-j", "list", "set", netrules.FAMILY, netrules.TABLE, "ifaces")
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    for item in items:
        for elem in (item.get("set") or {}).get("elem") or []:
            body = elem.get("elem") if isinstance(elem, dict) else None
            comment = (body or {}).get("comment") or ""
            if tags and comment.startswith(tags):
                found.append(f"nft set ifaces element {body.get('val')} of {comment}")
    for data_dir in data_dirs:
        found += [f"stored network policy {p}" for p in data_dir.glob("network/*.json")]
    for net in fakenet.OPENED:
        found += [f"fake internet {x}" for x in net.leftovers()]
    return found


def leftovers(root: Path, cgroups: list[str] | None = None) -> list[str]:
    """Every mount, agent process, loop device and sandbox dir that exists now
    under ``root``, plus the sandbox cgroups given (see cgroup_scope), plus
    the network objects of every data dir this process remembered."""
    return (
        _mounts_under(root)
        + _agents_under(root)
        + _loops_under(root)
        + _sandbox_dirs(root)
        + list(cgroups or [])
        + network_leftovers(DATA_DIRS)
    )
