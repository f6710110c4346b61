"""Fixtures for the Linux runtime contract tests: real runc, real agent, root only.

The base template is built once into a shared directory (reused across runs:
``SANDBANK_TEST_TEMPLATES``); every test module gets a fresh data dir and must
leave nothing behind on the host.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.runtime.base import ExecResult, ExecSpec, SandboxSpec
from sandbank.runtime.linux.driver import LinuxRuntime
from sandbank.runtime.templates import TemplateStore
from tests.support.leaks import remember

TEST_ROOT = Path(os.environ.get("SANDBANK_TEST_ROOT", "/var/lib/sandbank-test"))
TEMPLATES = Path(os.environ.get("SANDBANK_TEST_TEMPLATES", str(TEST_ROOT / "templates")))


def template_seed() -> Path | None:
    """A local unshifted debootstrap to build from instead of the mirror, if given."""
    configured = os.environ.get("SANDBANK_TEST_TEMPLATE_SEED")
    return Path(configured) if configured else None


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the Linux runtime needs root")
    if shutil.which("runc") is None and shutil.which("crun") is None:
        pytest.skip("no OCI runtime installed")


@pytest.fixture(scope="session")
async def base_template() -> Path:
    skip_unless_possible()
    store = TemplateStore(TEMPLATES, seed=template_seed())
    info = await store.ensure("base")
    assert info.ready
    return store.lower("base")


def new_data_dir(prefix: str) -> Path:
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    # Root inside a sandbox (an unprivileged host uid) must traverse to its rootfs.
    os.chmod(TEST_ROOT, 0o711)
    return remember(TEST_ROOT / f"{prefix}-{secrets.token_hex(3)}")


def host_traces(data_dir: Path) -> list[str]:
    """Anything on the host that still refers to ``data_dir``."""
    found: list[str] = []
    text = Path("/proc/self/mounts").read_text()
    found += [f"mount: {line}" for line in text.splitlines() if str(data_dir) in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if root.startswith(str(data_dir)):
            found.append(f"process {pid} rooted in {root}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if str(data_dir) in backing.read_text():
                found.append(f"loop device {backing.parts[3]}")
        except OSError:
            continue
    return found


def sandbox_cgroup_dirs(rt: LinuxRuntime, ids: set[str]) -> list[str]:
    parent = f"{rt.cgroup_parent.rstrip('/')}/sandbank"
    found: list[str] = []
    for sid in ids:
        found += [str(d) for d in rt.cgroups.cgroup(f"{parent}/{sid}").existing()]
    return found


class Harness:
    """A runtime on a fresh data dir plus helpers; remembers every id it made."""

    def __init__(self, rt: LinuxRuntime) -> None:
        self.rt = rt
        self.ids: set[str] = set()

    def spec(self, **overrides: object) -> SandboxSpec:
        sid = str(overrides.pop("id", "c" + secrets.token_hex(7)))
        fields: dict[str, object] = {
            "id": sid, "template": "base", "vcpu": 1.0, "memory_mb": 512, "disk_gb": 1,
            "hostname": f"box-{sid[:6]}", "pids_limit": 1024,
        }  # fmt: skip
        fields.update(overrides)
        return SandboxSpec(**fields)  # type: ignore[arg-type]

    async def create(self, **overrides: object) -> str:
        spec = self.spec(**overrides)
        self.ids.add(spec.id)
        await self.rt.create(spec)
        return spec.id

    async def sh(
        self, sid: str, script: str, *, user: str = "user", timeout: float = 60
    ) -> ExecResult:
        spec = ExecSpec(cmd=["/bin/bash", "-c", script], user=user, timeout=timeout)
        return await self.rt.channel(sid).exec(spec)

    async def out(self, sid: str, script: str, *, user: str = "user") -> str:
        result = await self.sh(sid, script, user=user)
        assert result.exit_code == 0, (script, result)
        return result.stdout.decode().strip()


@pytest.fixture(scope="module")
async def harness(base_template: Path) -> AsyncIterator[Harness]:
    data_dir = new_data_dir("contract")
    rt = LinuxRuntime(data_dir, TEMPLATES, template_seed=template_seed())
    await rt.start()
    h = Harness(rt)
    try:
        yield h
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        traces = host_traces(data_dir) + sandbox_cgroup_dirs(rt, h.ids)
        if not traces:
            shutil.rmtree(data_dir, ignore_errors=True)
        assert not traces, f"left on the host: {traces}"
