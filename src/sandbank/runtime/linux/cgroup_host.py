"""The server's side of the host's cgroups, apart from any one sandbox's:
where sandboxes nest given the server's own cgroup (``make_room``), and
whether the mounts spare each start an RCU grace period (``favors_dynmods``).
Both run once, at the runtime's start.
"""

from __future__ import annotations

import contextlib

from sandbank.runtime.linux import mounts as mount_table
from sandbank.runtime.linux.cgroups import CgroupLayout, _join


def favors_dynmods(mounts: str | None = None) -> bool:
    """Whether a cgroup hierarchy is mounted with ``favordynmods``.

    Without it, every move of a process into a cgroup, which the OCI runtime
    makes at each sandbox start, waits for an RCU grace period: 5-15 ms of a
    ~25 ms ``runc run`` on a small VM. One hierarchy with the option is enough
    (the lock it changes is global); it makes forks and exits slightly dearer,
    and from Linux 6.18 on it cannot be turned off again until a reboot.
    """
    table = mount_table.table() if mounts is None else mount_table.parse(mounts)
    return any(
        m.fstype in ("cgroup", "cgroup2") and "favordynmods" in m.options for m in table
    )


SERVER_LEAF = "sandbank-server"


def make_room(layout: CgroupLayout, own: str, leaf: str = SERVER_LEAF) -> str:
    """The cgroup to nest sandboxes under, given the server's own cgroup ``own``.

    On v2, cgroup2's "no internal processes" rule forbids enabling controllers
    for the children of a cgroup that has processes of its own, which is exactly
    the server's cgroup (a systemd service, a container). The processes of that
    cgroup (the server and its own helpers) move into a ``leaf`` child, and
    sandboxes nest beside it. A server that already sits in such a leaf (a
    second start in the same process) nests under the leaf's parent. On v1 and
    at the root this is ``own`` unchanged.
    """
    if layout.version != 2 or not own.strip("/"):
        return own
    head, _, tail = own.rstrip("/").rpartition("/")
    if tail == leaf:
        return head or "/"
    base = _join(layout.hierarchies[0].mountpoint, own)
    procs = (base / "cgroup.procs").read_text().split()
    if procs:
        target = base / leaf
        target.mkdir(exist_ok=True)
        for pid in procs:
            # A process can exit between the read and the write.
            with contextlib.suppress(OSError):
                (target / "cgroup.procs").write_text(pid)
    return own
