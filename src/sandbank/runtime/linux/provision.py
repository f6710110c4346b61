"""How the Linux runtime makes a sandbox's container to a ``SandboxSpec``:
``create`` on a fresh disk, the build it shares with a start (``stopstart.py``),
the network attach that overlaps the agent's boot, and ``customize``, which
refits a live container (a pool member being handed out).

A base class of ``LinuxRuntime``, kept apart so the driver stays readable; the
driver's state and helpers it uses are declared here and set by the driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sandbank.errors import InvalidState, RuntimeFailure, SandboxNotFound, SandboxUnavailable
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.linux import (
    customize,
    disk,
    network,
    oci,
    resolv,
    rootfs,
    seccomp,
    teardown,
)
from sandbank.runtime.linux.cgroups import CgroupLayout, Limits
from sandbank.runtime.linux.layout import MAX_SOCKET_PATH, SandboxDir, SandboxRecord
from sandbank.runtime.linux.ocicli import OciCli
from sandbank.runtime.templates import TemplateStore

log = logging.getLogger(__name__)


class ProvisionMethods:
    store: TemplateStore
    pool: disk.DiskPool
    network: network.SandboxNetworks
    agent_lib: Path
    cgroup_parent: str
    pids_ceiling: int
    ready_timeout: float
    timings: dict[str, dict[str, float]]
    _channels: dict[str, AgentClient]
    _cpus: customize.CpuSpread

    @property
    def ocicli(self) -> OciCli:
        raise NotImplementedError

    @property
    def cgroups(self) -> CgroupLayout:
        raise NotImplementedError

    def _box(self, sandbox_id: str) -> SandboxDir:
        raise NotImplementedError

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        raise NotImplementedError

    def _target(self, sandbox_id: str) -> teardown.Target:
        raise NotImplementedError

    def _client(self, box: SandboxDir) -> AgentClient:
        raise NotImplementedError

    async def create(self, spec: SandboxSpec) -> None:
        box = self._box(spec.id)
        async with self._lock(spec.id):
            if box.root.exists() or self.ocicli.state_dir(spec.id).exists():
                raise InvalidState(f"sandbox {spec.id} already exists")
            lower = self.store.lowers(spec.template)
            if len(str(box.socket).encode()) > MAX_SOCKET_PATH:
                raise RuntimeFailure(f"data dir path too long for a unix socket: {box.socket}")
            marks: dict[str, float] = {}
            clock = time.monotonic()

            def mark(phase: str) -> None:
                nonlocal clock
                now = time.monotonic()
                marks[phase] = now - clock
                clock = now

            try:
                await self._build(spec, box, lower, mark)
            except BaseException as exc:
                self.pool.refill(spec.disk_gb)
                detail = box.log_tail()
                errors = await teardown.destroy(self._target(spec.id))
                if errors:
                    log.error("cleanup after failed create of %s: %s", spec.id, errors)
                if not isinstance(exc, Exception):
                    raise
                msg = f"creating sandbox {spec.id} failed: {exc}"
                if detail:
                    msg += f"\nagent.log:\n{detail}"
                raise RuntimeFailure(msg) from exc
            # After the create, not during it: formatting competes for the CPU.
            self.pool.refill(spec.disk_gb)
            # The network phase overlaps the agent's start; it reports its own share.
            self.timings[spec.id] = {**marks, **self.timings.get(spec.id, {})}
            log.debug("created %s: %s", spec.id, {k: round(v * 1000, 1) for k, v in marks.items()})

    async def _build(
        self, spec: SandboxSpec, box: SandboxDir, lower: list[Path], mark: Callable[[str], None]
    ) -> None:
        box.root.mkdir(mode=0o711, exist_ok=True)  # a stopped sandbox's dir has its disk
        cgroups_path = f"{self.cgroup_parent.rstrip('/')}/sandbank/{spec.id}"
        pids = self._pids(spec.pids_limit)
        record = SandboxRecord(
            id=spec.id, cgroups_path=cgroups_path, lower=":".join(map(str, lower)),
            oci_binary=self.ocicli.binary, disk_gb=spec.disk_gb, memory_mb=spec.memory_mb,
            pids_limit=pids, created_at=time.time(), vcpu=spec.vcpu, hostname=spec.hostname,
        )  # fmt: skip
        record.save(box.record)
        mark("prepare")
        if not box.image.exists():
            await self.pool.take(spec.disk_gb, box.image)
        mark("disk image")
        await asyncio.to_thread(rootfs.assemble, box, lower, spec.hostname, mark)
        listener = rootfs.listen(box)
        try:
            config = oci.build_config(
                dataclasses.replace(spec, pids_limit=pids),
                cgroups_path=cgroups_path,
                run_dir=box.run,
                agent_lib=self.agent_lib,
                swap_limit=self.cgroups.swap_limit_supported(self.cgroup_parent),
                seccomp=seccomp.profile(),
            )
            box.config.write_text(json.dumps(config, separators=(",", ":")))
            mark("config")
            # The listener goes in as the container's stdin; runc hands it to the agent.
            await self.ocicli.run_detached(
                spec.id, box.root, box.log, timeout=60, stdin=listener.fileno()
            )
        finally:
            # Only the agent may hold it now: were it to die, our copy would keep
            # connections waiting in the backlog instead of failing them.
            listener.close()
        mark("oci run")
        client = self._client(box)
        # The agent boots while its network is made: neither waits for the other.
        await network.together(
            self._attach_network(spec, box), client.wait_ready(timeout=self.ready_timeout)
        )
        # Pinned to its CPUs only now: set in the config, it would also pin the
        # agent's start-up, to share one CPU with the exiting OCI runtime (~2 ms).
        self.cgroups.cgroup(cgroups_path).set_cpus(self._cpus.pick(spec.vcpu))
        self._channels[spec.id] = client
        mark("agent ready")

    async def _attach_network(self, spec: SandboxSpec, box: SandboxDir) -> None:
        started = time.monotonic()
        agent = await self.ocicli.init_process(spec.id)
        if agent is None:
            raise RuntimeFailure(f"sandbox {spec.id} stopped right after it started")
        att = await self.network.attach(spec.id, *agent, spec.network or NetworkPolicy())
        # Nothing untrusted has run in the sandbox yet: its /etc is still the template's.
        resolv.write_resolv_conf(box.rootfs, att.resolv_conf(), oci.ID_SHIFT)
        self.timings.setdefault(spec.id, {})["network"] = time.monotonic() - started

    def _pids(self, wanted: int) -> int:
        """The pids limit a sandbox gets: what it asks for, under the host-wide ceiling."""
        if self.pids_ceiling > 0:
            return min(wanted, self.pids_ceiling) if wanted > 0 else self.pids_ceiling
        return wanted

    async def customize(self, spec: SandboxSpec) -> None:
        box = self._box(spec.id)
        async with self._lock(spec.id):
            record = SandboxRecord.load(box.record)
            if record is None:
                raise SandboxNotFound(f"sandbox {spec.id} does not exist")
            agent = await self.ocicli.init_process(spec.id)
            if agent is None:
                raise SandboxUnavailable(f"sandbox {spec.id} is not running")
            if spec.disk_gb != record.disk_gb:
                raise InvalidState(
                    f"sandbox {spec.id} has a {record.disk_gb} GB disk; its size cannot change"
                )
            hostname = customize.check_hostname(spec.hostname)
            before = record
            pids = self._pids(spec.pids_limit)
            # A pool member handed out with the limits it was started with (the
            # common case) keeps its cgroup as it is: nothing to write or record.
            wanted = (spec.vcpu, spec.memory_mb, pids)
            if wanted != (record.vcpu, record.memory_mb, record.pids_limit):
                cg = self.cgroups.cgroup(record.cgroups_path)
                limits = Limits(
                    cpu_quota=oci.cpu_quota(spec.vcpu), cpu_period=oci.CPU_PERIOD,
                    cpus=self._cpus.pick(spec.vcpu, cg.cpus()), memory=spec.memory_mb * oci.MIB,
                    no_swap=True, pids=pids,
                )  # fmt: skip
                customize.set_limits(cg, limits, spec.id)
                record = dataclasses.replace(
                    record, vcpu=spec.vcpu, memory_mb=spec.memory_mb, pids_limit=pids
                )
            if spec.network is not None:
                await self.network.set_policy(spec.id, spec.network)
            try:
                if hostname != record.hostname:
                    client = self._channels.get(spec.id) or self._client(box)
                    await asyncio.gather(
                        customize.set_uts_hostname(*agent, hostname), client.set_hostname(hostname)
                    )
                    record = dataclasses.replace(record, hostname=hostname)
            finally:
                # The limits are in force whatever became of the name.
                if record != before:
                    record.save(box.record)
