"""The seccomp profile: allow by default, deny a short list.

Why a deny list and not moby's allow list: the capability set already takes
away CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_TIME, ... so mount, umount2,
pivot_root, setns, clock_settime and friends fail with EPERM without a filter.
What remains dangerous is kernel surface reachable *without* capabilities, or
by root of a nested user namespace (who holds every capability there):

* module loading, kexec, reboot, swap, accounting, quotas: never legitimate
  in a sandbox (they also need capabilities; denying them is defence in depth);
* bpf, perf_event_open, userfaultfd, io_uring: large attack surface, source of
  many kernel privilege escalations;
* keyctl/add_key/request_key: the kernel keyring is not namespaced;
* open_by_handle_at: the classic container breakout (shocker);
* new user namespaces (clone/unshare with CLONE_NEWUSER): root of a nested user
  namespace holds CAP_SYS_ADMIN there and can reach nf_tables, overlayfs and
  other mount code. ``clone3`` takes its flags behind a pointer seccomp cannot
  read, so it fails with ENOSYS and libc falls back to ``clone``.

Everything else (ptrace for debuggers, personality, ...) stays allowed: this is
a development machine for an agent, not a locked-down service.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

CLONE_NEWUSER = 0x10000000

DENIED = [
    "acct", "add_key", "bpf", "create_module", "delete_module", "finit_module",
    "get_kernel_syms", "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup",
    "ioperm", "iopl", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "nfsservctl", "open_by_handle_at", "perf_event_open", "query_module", "quotactl",
    "quotactl_fd", "reboot", "request_key", "swapoff", "swapon", "uselib", "userfaultfd",
    "vm86", "vm86old",
]  # fmt: skip

#: The native architecture plus the compat ones, so a 32-bit syscall cannot bypass a rule.
ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _deny_newuser(syscall: str, index: int) -> dict[str, Any]:
    return {
        "names": [syscall],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": errno.EPERM,
        "args": [
            {
                "index": index,
                "value": CLONE_NEWUSER,
                "valueTwo": CLONE_NEWUSER,
                "op": "SCMP_CMP_MASKED_EQ",
            }
        ],
    }


def profile(machine: str | None = None) -> dict[str, Any]:
    machine = machine or platform.machine()
    # s390 passes clone's flags second; everything else first.
    clone_flags = 1 if machine.startswith("s390") else 0
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHES.get(machine, []),
        "syscalls": [
            {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            _deny_newuser("clone", clone_flags),
            _deny_newuser("unshare", 0),
        ],
    }

