"""The Linux runtime: runc + overlayfs + a loop-mounted ext4 disk + cgroups + namespaces.

A sandbox is an OCI container whose process is the agent. It is started
detached (``run -d``), so it is not a child of the server and survives a
server crash; everything needed to find and remove it again lives on disk
(``runtime.json``, the OCI runtime's state, the mount table), never only in
this object's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Protocol

from sandbank.errors import RuntimeFailure, SandboxNotFound, SandboxUnavailable
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import SandboxChannel, SandboxUsage, TemplateInfo
from sandbank.runtime.linux import (
    agentlib,
    customize,
    disk,
    fsflags,
    hostread,
    mounts,
    network,
    oci,
    snapshots,
    stopstart,
    teardown,
)
from sandbank.runtime.linux.accounting import UsageReader
from sandbank.runtime.linux.cgroup_host import favors_dynmods, make_room
from sandbank.runtime.linux.cgroups import Cgroup, CgroupLayout
from sandbank.runtime.linux.checkpoint_flow import Checkpointer, CheckpointMethods
from sandbank.runtime.linux.layout import (
    SandboxDir,
    SandboxRecord,
    check_id,
    is_valid_id,
)
from sandbank.runtime.linux.ocicli import OciCli, pick_binary
from sandbank.runtime.linux.provision import ProvisionMethods
from sandbank.runtime.linux.templating import TemplateOps
from sandbank.runtime.templates import TemplateStore

log = logging.getLogger(__name__)


class _Settings(Protocol):
    data_dir: Path
    oci_runtime: str
    template_mirror: str | None
    pids_limit: int

    @property
    def template_root(self) -> Path: ...


class LinuxRuntime(ProvisionMethods, stopstart.DiskLifecycle, TemplateOps, CheckpointMethods):
    name = "linux"

    def __init__(
        self,
        data_dir: Path,
        template_root: Path | None = None,
        *,
        oci_runtime: str = "auto",
        template_mirror: str | None = None,
        template_seed: Path | None = None,
        pids_limit: int = 0,
        disk_pool_sizes: Iterable[int] = (1,),
        disk_pool_depth: int = 2,
        ready_timeout: float = 20.0,
        network_cidr: str = network.DEFAULT_CIDR,
        network_dns: Iterable[str] = (),
        criu_binary: str | None = None,
    ) -> None:
        """``template_seed``: an unshifted debootstrap of the recipe's packages to
        build from instead of downloading (offline hosts, tests).
        ``pids_limit``: a host-wide ceiling on every sandbox's pids limit (0: none).
        ``disk_pool_*``: pre-formatted disk images kept ready, per size in GB.
        ``network_*``: the private range sandboxes get a /30 of, and the resolvers
        their DNS goes to (default: the host's)."""
        self.data_dir = Path(data_dir).absolute()
        self.template_root = Path(template_root or self.data_dir / "templates").absolute()
        self.oci_setting = oci_runtime
        self.pids_ceiling = pids_limit
        self.ready_timeout = ready_timeout
        self.store = TemplateStore(self.template_root, mirror=template_mirror, seed=template_seed)
        self.pool = disk.DiskPool(
            self.data_dir / "pool", owner=oci.ID_SHIFT, depth=disk_pool_depth, sizes=disk_pool_sizes
        )
        self.sandboxes_dir = self.data_dir / "sandboxes"
        self.agent_lib = self.data_dir / "agent" / "lib"
        self.layout: CgroupLayout | None = None
        self.cgroup_parent = "/"
        self._oci: OciCli | None = None
        # Weak: a lock lives while someone holds or awaits it, not once per id forever.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._channels: dict[str, AgentClient] = {}
        self._usage = UsageReader()
        self.network = network.SandboxNetworks(
            str(self.data_dir), network_cidr, list(network_dns),
            state_dir=self.data_dir / "network",
        )  # fmt: skip
        self._cpus = customize.CpuSpread([])
        self.checkpoints = Checkpointer(self, criu_binary)
        #: Seconds per create phase, by sandbox id (for benchmarks and the debug log).
        self.timings: dict[str, dict[str, float]] = {}

    @classmethod
    def from_settings(cls, settings: _Settings) -> LinuxRuntime:
        return cls(
            settings.data_dir,
            settings.template_root,
            oci_runtime=settings.oci_runtime,
            template_mirror=settings.template_mirror,
            # Optional settings: an offline seed, and the size most sandboxes ask for.
            template_seed=getattr(settings, "template_seed", None),
            pids_limit=settings.pids_limit,
            disk_pool_sizes=(getattr(settings, "disk_gb_default", 1),),
            network_cidr=getattr(settings, "network_cidr", network.DEFAULT_CIDR),
            network_dns=getattr(settings, "network_dns", None) or (),
            criu_binary=getattr(settings, "criu_binary", None),
        )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeFailure("the linux runtime needs root")
        for d in (self.data_dir, self.sandboxes_dir):
            d.mkdir(parents=True, exist_ok=True)
            # Root inside a sandbox is host uid ID_SHIFT: it must be able to traverse
            # down to its rootfs and bind-mount sources, and read nothing else.
            os.chmod(d, 0o711)
        _check_traversable(self.data_dir)
        for p in (self.data_dir, self.template_root):
            mounts.check_option_safe(p)
        (self.data_dir / "runc").mkdir(mode=0o700, exist_ok=True)
        try:
            fsflags.check_supported(self.sandboxes_dir)
        except OSError as exc:
            raise RuntimeFailure(
                f"the file system of {self.sandboxes_dir} cannot make directories immutable "
                f"(chattr +i), which keeps sandboxes from redirecting their channel: {exc}"
            ) from exc
        self.layout = CgroupLayout.detect()
        self.cgroup_parent = make_room(self.layout, self.layout.parent_path())
        binary = pick_binary(self.oci_setting, unified_cgroups=self.layout.version == 2)
        self._oci = OciCli(binary, self.data_dir / "runc")
        self._cpus = customize.CpuSpread(sorted(os.sched_getaffinity(0)))
        await asyncio.to_thread(agentlib.assemble, self.agent_lib)
        self.pool.start()
        await self.network.start()
        await self.checkpoints.start()
        log.info(
            "linux runtime: %s, cgroup v%d%s under %s",
            binary, self.layout.version, " (hybrid)" if self.layout.hybrid else "",
            self.cgroup_parent,
        )  # fmt: skip
        if not favors_dynmods():
            log.info("no cgroup mount has favordynmods: each sandbox start waits 5-15 ms for an "
                     "RCU grace period (see cgroup_host.favors_dynmods)")  # fmt: skip

    async def close(self) -> None:
        # Sandboxes keep running: they outlive the server by design.
        await self.pool.close()
        await self.network.close()

    @property
    def ocicli(self) -> OciCli:
        if self._oci is None:
            raise RuntimeFailure("the linux runtime is not started")
        return self._oci

    @property
    def cgroups(self) -> CgroupLayout:
        if self.layout is None:
            raise RuntimeFailure("the linux runtime is not started")
        return self.layout

    # -- templates -------------------------------------------------------------

    async def ensure_template(
        self, name: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        return await self.store.ensure(name, on_progress)

    async def templates(self) -> list[TemplateInfo]:
        return [self.store.info(n) for n in self.store.names()]

    # -- sandboxes ---------------------------------------------------------------

    def _box(self, sandbox_id: str) -> SandboxDir:
        return SandboxDir(self.sandboxes_dir / check_id(sandbox_id))

    def _client(self, box: SandboxDir) -> AgentClient:
        init = partial(self.ocicli.init_process, box.root.name)
        return hostread.HostReadAgentClient(box.socket, init)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _target(self, sandbox_id: str) -> teardown.Target:
        box = self._box(sandbox_id)
        cgs = teardown.cgroup_candidates(
            sandbox_id, self.cgroups, self.ocicli, box, self.cgroup_parent
        )
        return teardown.Target(sandbox_id, box, self.ocicli, cgs, self.network)

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        async with self._lock(check_id(sandbox_id)):
            if await self.ocicli.init_process(sandbox_id) is None:
                raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
            await self.network.set_policy(sandbox_id, policy)

    async def destroy(self, sandbox_id: str) -> None:
        async with self._lock(check_id(sandbox_id)):
            target = self._target(sandbox_id)
            self._channels.pop(sandbox_id, None)
            hostread.retire(self._box(sandbox_id).socket)
            self._usage.forget(sandbox_id)
            self.timings.pop(sandbox_id, None)
            self._thaw_v1(sandbox_id)
            errors = await teardown.destroy(target)
            left = teardown.leftovers(target) + await self.network.leftovers(sandbox_id)
        if left:
            detail = "; ".join(left)
            if errors:
                detail += " (errors: " + "; ".join(errors) + ")"
            raise RuntimeFailure(f"sandbox {sandbox_id} was not fully removed: {detail}")

    def _thaw_v1(self, sandbox_id: str) -> None:
        """A paused sandbox on cgroup v1 must be thawed for SIGKILL to finish its
        tasks; v2 kills frozen tasks as they are (and teardown thaws anyway)."""
        if self.cgroups.version != 1:
            return
        with contextlib.suppress(OSError, FileNotFoundError):
            cgroup = self.cgroup(sandbox_id)
            if cgroup is not None and cgroup.existing():
                cgroup.thaw()

    def _live_cgroup(self, sandbox_id: str) -> Cgroup:
        cgroup = self.cgroup(sandbox_id)
        if cgroup is None or not cgroup.existing():
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        return cgroup

    async def pause(self, sandbox_id: str) -> None:
        async with self._lock(check_id(sandbox_id)):
            cgroup = self._live_cgroup(sandbox_id)
            try:
                done = await cgroup.freeze_wait()
            except OSError as exc:
                raise RuntimeFailure(f"could not pause sandbox {sandbox_id}: {exc}") from exc
            if not done:
                with contextlib.suppress(OSError):
                    cgroup.thaw()
                raise RuntimeFailure(
                    f"sandbox {sandbox_id} did not freeze in time; it was left running"
                )

    async def resume(self, sandbox_id: str) -> None:
        async with self._lock(check_id(sandbox_id)):
            cgroup = self._live_cgroup(sandbox_id)
            try:
                cgroup.thaw()
            except OSError as exc:
                raise RuntimeFailure(f"could not resume sandbox {sandbox_id}: {exc}") from exc

    async def endpoint(self, sandbox_id: str, port: int) -> tuple[str, int]:
        att = await self.network.address(check_id(sandbox_id))
        if att is None:
            raise SandboxUnavailable(f"sandbox {sandbox_id} has no network")
        return att.address, port

    async def leftovers(self, sandbox_id: str) -> list[str]:
        left = teardown.leftovers(self._target(sandbox_id))
        return left + await self.network.leftovers(sandbox_id)

    async def running(self) -> set[str]:
        ids = await self.ocicli.list_ids()
        if self.sandboxes_dir.is_dir():
            ids |= {p.name for p in self.sandboxes_dir.iterdir()}
        for m in mounts.under(self.sandboxes_dir):
            rel = m.point.relative_to(self.sandboxes_dir).parts
            if rel:
                ids.add(rel[0])
        ids |= await self.network.ids()
        return {i for i in ids if is_valid_id(i)}

    async def is_alive(self, sandbox_id: str) -> bool:
        return await self.ocicli.init_process(check_id(sandbox_id)) is not None

    async def adopt(self, sandbox_id: str) -> bool:
        state = await self.ocicli.state(check_id(sandbox_id))
        if state is None or state.get("status") not in ("running", "paused"):
            return False
        box = self._box(sandbox_id)
        try:
            # An unsealed run dir means the server died before the sandbox was
            # handed out: its socket path cannot be trusted, and nobody uses it yet.
            if not fsflags.is_sealed(box.run) or not stat.S_ISSOCK(os.lstat(box.socket).st_mode):
                return False
        except OSError:
            return False
        client = self._client(box)
        cgroup = self.cgroup(sandbox_id)
        snapshots.thaw_disk(self, sandbox_id)
        with contextlib.suppress(OSError):
            if cgroup is not None and cgroup.frozen():
                # Paused: its agent cannot answer until resumed.
                self._channels[sandbox_id] = client
                return True
        try:
            await asyncio.wait_for(client.ping(), 5)
        except Exception as exc:
            log.info("adopting %s: agent does not answer: %s", sandbox_id, exc)
            return False
        self._channels[sandbox_id] = client
        return True

    def channel(self, sandbox_id: str) -> SandboxChannel:
        client = self._channels.get(sandbox_id)
        if client is None:
            box = self._box(sandbox_id)
            if not box.root.is_dir():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
            client = self._channels[sandbox_id] = self._client(box)
        return client

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        box = self._box(sandbox_id)
        record = SandboxRecord.load(box.record)
        if record is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        try:
            return await self._usage.read(
                sandbox_id, self.cgroups.cgroup(record.cgroups_path), box.disk
            )
        except FileNotFoundError as exc:
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc

    def cgroup(self, sandbox_id: str) -> Cgroup | None:
        record = SandboxRecord.load(self._box(sandbox_id).record)
        return None if record is None else self.cgroups.cgroup(record.cgroups_path)


def _check_traversable(path: Path) -> None:
    """Every parent of the data dir must let others (root inside a sandbox) pass."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            raise RuntimeFailure(
                f"{parent} is not searchable by other users (mode o+x); sandboxes run as "
                f"host uid {oci.ID_SHIFT} and must reach {path}: chmod o+x {parent}"
            )
