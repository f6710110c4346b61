"""The OCI bundle ``config.json`` for one sandbox.

A pure function of the sandbox spec and a few host facts, so it can be unit
tested without root. The choices, and why:

* every namespace including user and cgroup; container root is host uid
  ``ID_SHIFT`` (the template is stored pre-shifted because runc 1.1 has no
  idmapped mounts);
* the container process is the agent, running as root inside: it needs to
  switch to ``user`` (or stay root) per exec;
* the capability set is the OCI/containerd default (no CAP_SYS_ADMIN, so
  mount/umount/pivot_root fail even before seccomp), with an empty inheritable
  set as in moby after CVE-2022-24769;
* ``noNewPrivileges`` is off because ``sudo`` inside must work;
* /proc paths masked and made read-only as runc/containerd do by default,
  /sys and the cgroup mount read-only;
* rlimits never above the host's hard limits: without CAP_SYS_RESOURCE on the
  host, runc cannot raise them and the container would fail to start;
* besides the quota, a cpuset of ``ceil(vcpu)`` CPUs (``pick_cpus``; the driver
  writes it once the agent is up), so that ``nproc`` and
  ``os.sched_getaffinity`` inside tell the truth and ``make -j$(nproc)`` does
  not start a job per host core to share one core's worth of quota.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbank.protocol.agent import AGENT_LIB, SOCKET_DIR
from sandbank.runtime.base import SandboxSpec

#: Host uid/gid of root inside every sandbox, and how many ids are mapped.
ID_SHIFT = 100000
ID_RANGE = 65536

CPU_PERIOD = 100000
MIB = 1024 * 1024

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The agent, started the cheapest way: ``-I`` (isolated: no environment, no
#: user site, no current directory on the path) and ``-S`` (no site module),
#: its library put on the path by hand, and ``-c`` rather than ``-m``, whose
#: runpy machinery costs ~6 ms of every start. It serves the listening socket
#: the runtime passes as its stdin.
AGENT_BOOT = (
    f"import sys; sys.path.insert(0, {AGENT_LIB!r}); "
    "from sandbank.agent.server import main; sys.exit(main(sys.argv[1:]))"
)
AGENT_ARGS = ["/usr/bin/python3", "-I", "-S", "-c", AGENT_BOOT, "--listen-fd", "0"]

#: containerd's/moby's default capability set.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

NAMESPACES = ["pid", "mount", "ipc", "uts", "network", "cgroup", "user"]

#: rlimits the sandbox gets, capped at the host's hard limit.
WANTED_RLIMITS = {
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
}
WANTED_NOFILE = 1024 * 1024


def host_rlimits() -> list[dict[str, Any]]:
    """rlimits from this process's hard limits (runc inherits them from us).

    NPROC is counted per user namespace (kernel >= 5.14), so sandboxes sharing
    host uid ``ID_SHIFT`` do not share one budget; the pids cgroup is the real
    per-sandbox cap.
    """
    limits: list[dict[str, Any]] = []
    for name, rid in WANTED_RLIMITS.items():
        _soft, hard = resource.getrlimit(rid)
        hard_value = (2**64 - 1) if hard == resource.RLIM_INFINITY else hard
        soft_value = min(hard_value, WANTED_NOFILE) if name == "RLIMIT_NOFILE" else hard_value
        limits.append({"type": name, "hard": hard_value, "soft": soft_value})
    return limits


def _mount(dest: str, typ: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": typ, "source": source, "options": options}


def mounts(run_dir: Path, agent_lib: Path) -> list[dict[str, Any]]:
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=64m"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        # Allowed because the sandbox owns its network namespace.
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "ro"]),
        _mount(SOCKET_DIR, "bind", str(run_dir), ["rbind", "nosuid", "nodev", "noexec", "rw"]),
        _mount(AGENT_LIB, "bind", str(agent_lib), ["rbind", "nosuid", "nodev", "ro"]),
    ]


def cpu_quota(vcpu: float) -> int:
    """Microseconds of CPU time per ``CPU_PERIOD``; the kernel refuses less than 1 ms."""
    return max(1000, round(vcpu * CPU_PERIOD))


def pick_cpus(vcpu: float, available: Sequence[int], start: int) -> str:
    """A cpuset list of ``ceil(vcpu)`` of the ``available`` CPUs, taken in turn
    from index ``start`` on so that sandboxes spread over the host."""
    if not available:
        raise ValueError("no CPUs to pick from")
    count = min(len(available), max(1, math.ceil(vcpu)))
    chosen = sorted(available[(start + i) % len(available)] for i in range(count))
    return ",".join(map(str, chosen))


def resources(spec: SandboxSpec, *, swap_limit: bool) -> dict[str, Any]:
    limit = spec.memory_mb * MIB
    memory: dict[str, Any] = {"limit": limit}
    if swap_limit:
        # memory+swap == memory: no swap at all (v2: runc writes swap.max = 0).
        memory["swap"] = limit
    return {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": memory,
        "cpu": {"quota": cpu_quota(spec.vcpu), "period": CPU_PERIOD},
        "pids": {"limit": spec.pids_limit},
    }


def build_config(
    spec: SandboxSpec,
    *,
    cgroups_path: str,
    run_dir: Path,
    agent_lib: Path,
    swap_limit: bool,
    seccomp: dict[str, Any] | None,
    rlimits: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    # Only the agent's own environment: it never passes it on to commands, so the
    # sandbox's variables (spec.env) travel with each exec request instead.
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    caps = list(DEFAULT_CAPS)
    linux: dict[str, Any] = {
        "namespaces": [{"type": ns} for ns in NAMESPACES],
        "uidMappings": [{"containerID": 0, "hostID": ID_SHIFT, "size": ID_RANGE}],
        "gidMappings": [{"containerID": 0, "hostID": ID_SHIFT, "size": ID_RANGE}],
        "cgroupsPath": cgroups_path,
        "resources": resources(spec, swap_limit=swap_limit),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(AGENT_ARGS),
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": host_rlimits() if rlimits is None else rlimits,
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts(run_dir, agent_lib),
        "linux": linux,
    }
