"""The OCI config.json, the seccomp profile and the choice of OCI runtime."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path
from typing import Any

import pytest

from sandbank.errors import RuntimeFailure
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.linux import ocicli, seccomp
from sandbank.runtime.linux.oci import (
    AGENT_ARGS,
    DEFAULT_CAPS,
    ID_RANGE,
    ID_SHIFT,
    MASKED_PATHS,
    READONLY_PATHS,
    build_config,
    host_rlimits,
    pick_cpus,
)

SPEC = SandboxSpec(
    id="sbx1",
    template="base",
    vcpu=1.5,
    memory_mb=512,
    disk_gb=1,
    hostname="my-box",
    pids_limit=256,
    env={"FOO": "bar", "PYTHONPATH": "/evil"},
)


def config(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "cgroups_path": "/srv/sandbank/sbx1",
        "run_dir": Path("/data/sandboxes/sbx1/run"),
        "agent_lib": Path("/data/agent/lib"),
        "swap_limit": True,
        "seccomp": seccomp.profile("x86_64"),
    }
    kwargs.update(overrides)
    return build_config(SPEC, **kwargs)


def test_process_is_the_agent_as_root_inside() -> None:
    proc = config()["process"]
    assert proc["args"] == AGENT_ARGS
    # Isolated and without site: no environment variable or file of the sandbox
    # decides what the agent imports; the listening socket comes in as stdin.
    assert proc["args"][:4] == ["/usr/bin/python3", "-I", "-S", "-c"]
    assert "sys.path.insert(0, '/opt/sandbank/lib')" in proc["args"][4]
    assert proc["args"][5:] == ["--listen-fd", "0"]
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["terminal"] is False
    # sudo inside must work.
    assert proc["noNewPrivileges"] is False
    env = dict(e.split("=", 1) for e in proc["env"])
    assert "PYTHONPATH" not in env
    assert "FOO" not in env  # sandbox variables go with each exec, not into the agent
    assert "/usr/bin" in env["PATH"]


def test_every_namespace_and_the_id_shift() -> None:
    linux = config()["linux"]
    kinds = {ns["type"] for ns in linux["namespaces"]}
    assert kinds == {"pid", "mount", "ipc", "uts", "network", "cgroup", "user"}
    assert all("path" not in ns for ns in linux["namespaces"])
    mapping = [{"containerID": 0, "hostID": ID_SHIFT, "size": ID_RANGE}]
    assert linux["uidMappings"] == mapping
    assert linux["gidMappings"] == mapping
    assert (ID_SHIFT, ID_RANGE) == (100000, 65536)
    assert config()["hostname"] == "my-box"


def test_resources() -> None:
    res = config()["linux"]["resources"]
    assert res["memory"] == {"limit": 512 * 1024 * 1024, "swap": 512 * 1024 * 1024}
    assert res["cpu"] == {"quota": 150000, "period": 100000}
    assert res["pids"] == {"limit": 256}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]
    assert config()["linux"]["cgroupsPath"] == "/srv/sandbank/sbx1"


def test_cpuset_spreads_ceil_vcpu_cpus() -> None:
    assert pick_cpus(1, [0, 1, 2, 3], 0) == "0"
    assert pick_cpus(1.5, [0, 1, 2, 3], 3) == "0,3"
    assert pick_cpus(0.2, [4, 6], 1) == "6"
    assert pick_cpus(8, [0, 1], 1) == "0,1"
    with pytest.raises(ValueError):
        pick_cpus(1, [], 0)


def test_no_swap_setting_without_swap_accounting() -> None:
    memory = config(swap_limit=False)["linux"]["resources"]["memory"]
    assert memory == {"limit": 512 * 1024 * 1024}


def test_capabilities_are_the_oci_default_set() -> None:
    caps = config()["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == DEFAULT_CAPS
    assert "inheritable" not in caps and "ambient" not in caps
    for dangerous in ("CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"):
        assert dangerous not in DEFAULT_CAPS
    for needed_by_sudo in ("CAP_SETUID", "CAP_SETGID", "CAP_AUDIT_WRITE"):
        assert needed_by_sudo in DEFAULT_CAPS


def test_masked_and_readonly_paths() -> None:
    linux = config()["linux"]
    assert linux["maskedPaths"] == MASKED_PATHS
    assert {"/proc/kcore", "/proc/keys", "/sys/firmware"} <= set(MASKED_PATHS)
    assert linux["readonlyPaths"] == READONLY_PATHS
    assert {"/proc/sys", "/proc/sysrq-trigger"} <= set(READONLY_PATHS)


def test_mounts() -> None:
    by_dest = {m["destination"]: m for m in config()["mounts"]}
    assert "ro" in by_dest["/sys"]["options"]
    assert "ro" in by_dest["/sys/fs/cgroup"]["options"]
    assert by_dest["/run/sandbank"]["source"] == "/data/sandboxes/sbx1/run"
    assert "rw" in by_dest["/run/sandbank"]["options"]
    assert by_dest["/opt/sandbank/lib"]["source"] == "/data/agent/lib"
    assert "ro" in by_dest["/opt/sandbank/lib"]["options"]
    assert by_dest["/proc"]["type"] == "proc"
    assert config()["root"] == {"path": "rootfs", "readonly": False}


def test_rlimits_never_exceed_the_host_hard_limits() -> None:
    limits = {r["type"]: r for r in host_rlimits()}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        assert limits["RLIMIT_NOFILE"]["hard"] == hard
        assert limits["RLIMIT_NOFILE"]["soft"] <= hard
    for r in limits.values():
        assert r["soft"] <= r["hard"]
    assert config()["process"]["rlimits"] == host_rlimits()


def test_seccomp_profile() -> None:
    prof = config()["linux"]["seccomp"]
    assert prof["defaultAction"] == "SCMP_ACT_ALLOW"
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    denied = {n for rule in prof["syscalls"] if "args" not in rule for n in rule["names"]}
    for name in (
        "kexec_load", "init_module", "finit_module", "delete_module", "bpf", "perf_event_open",
        "open_by_handle_at", "keyctl", "add_key", "request_key", "userfaultfd", "swapon",
        "swapoff", "reboot", "acct", "quotactl", "io_uring_setup", "clone3",
    ):  # fmt: skip
        assert name in denied
    # clone3 fails with ENOSYS so libc falls back to clone, whose flags seccomp can read.
    clone3 = next(r for r in prof["syscalls"] if r["names"] == ["clone3"])
    assert clone3["errnoRet"] == 38
    for name in ("clone", "unshare"):
        rule = next(r for r in prof["syscalls"] if r["names"] == [name])
        assert rule["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
        assert rule["args"][0]["value"] == seccomp.CLONE_NEWUSER
    # Calls an agent's sandbox needs stay allowed.
    assert not denied & {"ptrace", "mount", "execve", "clone", "setuid"}


def test_seccomp_profile_other_arches() -> None:
    assert seccomp.profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    s390 = seccomp.profile("s390x")
    clone = next(r for r in s390["syscalls"] if r["names"] == ["clone"])
    assert clone["args"][0]["index"] == 1


def test_seccomp_can_be_left_out() -> None:
    assert "seccomp" not in config(seccomp=None)["linux"]


def _which(found: dict[str, str]) -> Any:
    return lambda name: found.get(name) or (name if name.startswith("/") else None)


def test_pick_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"crun": "/usr/bin/crun", "runc": "/usr/sbin/runc"}
    monkeypatch.setattr(shutil, "which", _which(both))
    assert ocicli.pick_binary("auto", unified_cgroups=True) == "/usr/bin/crun"
    # crun 1.8 refuses hybrid hosts.
    assert ocicli.pick_binary("auto", unified_cgroups=False) == "/usr/sbin/runc"
    assert ocicli.pick_binary("runc", unified_cgroups=True) == "/usr/sbin/runc"
    assert ocicli.pick_binary("crun", unified_cgroups=False) == "/usr/bin/crun"
    monkeypatch.setattr(shutil, "which", _which({"runc": "/usr/sbin/runc"}))
    assert ocicli.pick_binary("auto", unified_cgroups=True) == "/usr/sbin/runc"
    with pytest.raises(RuntimeFailure):
        ocicli.pick_binary("crun", unified_cgroups=True)
    monkeypatch.setattr(shutil, "which", _which({}))
    with pytest.raises(RuntimeFailure):
        ocicli.pick_binary("auto", unified_cgroups=False)


async def test_containers_share_no_new_keyring(tmp_path: Path) -> None:
    """Every sandbox's root is the same host uid: a session keyring per container
    would use up that uid's key quota (kernel.keys.maxkeys, 200) at ~200 sandboxes."""
    fake = tmp_path / "fake-runc"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    log = tmp_path / "run.log"
    cli = ocicli.OciCli(str(fake), tmp_path / "state")
    await cli.run_detached("sbx1", tmp_path, log, timeout=10)
    argv = log.read_text().split()
    assert argv[argv.index("run") :] == [
        "run",
        "-d",
        "--no-new-keyring",
        "--bundle",
        str(tmp_path),
        "sbx1",
    ]
