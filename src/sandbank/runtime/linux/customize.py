"""Changing a running sandbox: its limits, written into its cgroup, and its name;
and which CPUs a sandbox gets.

The limits are plain writes to the sandbox's cgroup files (microseconds; an
``update`` of the OCI runtime would cost a process). The OCI runtime's own
state keeps the numbers of the create, which nothing reads back: ``runtime.json``
is where the current ones are recorded.

The name has two halves. The kernel's (UTS) hostname cannot be set from inside:
the agent lacks CAP_SYS_ADMIN, which no sandbox process gets (giving it to the
agent would also lock root inside out of ``/proc/1``). The driver, root on the
host, enters the sandbox's UTS namespace for that one call instead, on a thread
of its own that ends right after. The files (/etc/hostname, the /etc/hosts
line) belong to the sandbox and are rewritten by the agent, as root inside.
"""

from __future__ import annotations

import os
import re
import socket

from sandbank.errors import InvalidState, ValidationFailed
from sandbank.runtime.linux import kernel, oci
from sandbank.runtime.linux.cgroups import Cgroup, Limits

#: RFC 1123 labels joined by dots; the kernel keeps at most 64 bytes.
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
HOST_NAME_MAX = 64


def check_hostname(name: str) -> str:
    if len(name) > HOST_NAME_MAX or not _HOSTNAME.match(name):
        raise ValidationFailed(f"invalid hostname {name!r}")
    return name


def parse_cpus(text: str | None) -> list[int]:
    """A cpuset list ("0-2,5") as CPU numbers."""
    cpus: list[int] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class CpuSpread:
    """Hands out cpusets over ``cpus`` in turn, so that sandboxes spread over the host."""

    def __init__(self, cpus: list[int]) -> None:
        self.cpus = cpus
        self._turn = 0

    def pick(self, vcpu: float, current: str | None = None) -> str:
        """A resized sandbox keeps its first CPU; a new one takes the next turn."""
        first = parse_cpus(current)[:1]
        if first and first[0] in self.cpus:
            start = self.cpus.index(first[0])
        else:
            start = self._turn
            self._turn = (start + max(1, int(vcpu))) % len(self.cpus)
        return oci.pick_cpus(vcpu, self.cpus, start)


def set_limits(cg: Cgroup, limits: Limits, sandbox_id: str) -> None:
    """Refuse a memory limit below what the sandbox uses now, else write all limits.

    Checked before anything is written: the kernel would reclaim (stalling the
    sandbox, dropping its caches) or fail half-way, leaving a mix of old and
    new limits behind.
    """
    used = cg.memory_current()
    if limits.memory < used:
        raise InvalidState(
            f"sandbox {sandbox_id} uses {used} bytes of memory, more than the "
            f"{limits.memory} bytes asked for",
            memory_bytes=used,
            memory_limit_bytes=limits.memory,
        )
    cg.set_limits(limits)


async def set_uts_hostname(pid: int, start: int | None, name: str) -> None:
    """Set the hostname of the UTS namespace of process ``pid`` (started at ``start``)."""
    fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Checked after the open: the descriptor is the namespace of the process we
        # mean only if that process still ran then (a pid can be reused).
        if start is not None and kernel.process_start(pid) != start:
            raise ProcessLookupError(f"process {pid} is gone")

        def enter_and_set() -> None:
            kernel.setns(fd, kernel.CLONE_NEWUTS)
            socket.sethostname(name)

        await kernel.in_own_thread(enter_and_set)
    finally:
        os.close(fd)
