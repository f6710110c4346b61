"""Hibernate, wake and fork for the Linux driver, on top of checkpoint.py.

* ``checkpoint(id, leave_running=False)``: hibernation. The container is
  gone afterwards (no process, no memory, no cgroup, no network link); its
  disk and root file system stay mounted and the images wait in
  ``<box>/hibernated``. A failed dump leaves the sandbox running as it was.
* ``checkpoint(id, leave_running=True)``: the source of a fork. Its disk
  image is copied next to the images while it is frozen for the dump, so
  files and memory are of the same instant; it keeps running.
* ``restore(id, image)``: the source's id wakes it in place; another id
  makes a new sandbox from the images, with its own copy of the disk, cgroup,
  network link and address, and agent socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sandbank.errors import (
    CheckpointUnsupported,
    InvalidState,
    RuntimeFailure,
    SandboxNotFound,
)
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.linux import (
    checkpoint,
    criu,
    customize,
    fork_copies,
    oci,
    phases,
    teardown,
)
from sandbank.runtime.linux import network as network_mod
from sandbank.runtime.linux.cgroups import Cgroup, Limits
from sandbank.runtime.linux.fork_copies import Origin
from sandbank.runtime.linux.layout import SandboxDir, SandboxRecord, check_id

if TYPE_CHECKING:
    from sandbank.runtime.linux.driver import LinuxRuntime

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, rt: LinuxRuntime, criu_binary: str | None = None) -> None:
        self.rt = rt
        self.configured = criu_binary
        self.criu = criu.Criu(None, "the runtime is not started")
        self._removing: set[asyncio.Future[None]] = set()
        #: Fork copies whose dir was made during the dump, and from which images.
        self._prepared: dict[str, Path] = {}

    async def start(self) -> None:
        self.criu = await criu.detect(self.configured)
        if self.criu.usable:
            log.info("checkpoints: %s", self.criu.binary)
        else:
            log.warning("checkpoints (hibernate, fork) unavailable: %s", self.criu.problem)

    @property
    def problem(self) -> str | None:
        return self.criu.problem

    def _binary(self) -> str:
        if not self.criu.usable or self.criu.binary is None:
            raise CheckpointUnsupported(
                f"checkpoints are not available on this host: {self.criu.problem}"
            )
        return self.criu.binary

    def hibernated(self, sandbox_id: str) -> Path | None:
        images = self.rt._box(sandbox_id).root / "hibernated"
        return images if (images / checkpoint.META).is_file() else None

    async def checkpoint(
        self, sandbox_id: str, *, leave_running: bool, copies: Sequence[str] = ()
    ) -> str:
        """``copies``: ids of the new sandboxes this fork will be restored as;
        their dirs, disk copies and mounts are made while criu dumps, and
        ``restore`` then only restores into them."""
        binary = self._binary()
        rt = self.rt
        box = rt._box(check_id(sandbox_id))
        mark = phases.Phases()
        async with rt._lock(sandbox_id):
            mark("lock")
            if SandboxRecord.load(box.record) is None:
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
            cgroup = rt._live_cgroup(sandbox_id)
            if cgroup.frozen():
                raise InvalidState(f"sandbox {sandbox_id} is paused; resume it first")
            images = checkpoint.images_dir(box, leave_running)
            if images.exists():
                shutil.rmtree(images)
            checkpoint.make_images_dir(images)
            mark("images dir")
            side: asyncio.Future[None] | None = None

            def prepare_copies() -> None:
                nonlocal side
                side = asyncio.ensure_future(
                    fork_copies.prepare(rt, self._prepared, box, images, copies)
                )

            try:
                await checkpoint.dump(
                    rt.ocicli, binary, sandbox_id, box, images, cgroup,
                    leave_running=leave_running, mark=mark,
                    on_disk_copied=prepare_copies if copies and leave_running else None,
                )  # fmt: skip
                if side is not None:
                    await side
                    mark("copies ready")
            except BaseException:
                if side is not None:
                    await asyncio.wait([side])
                    await fork_copies.drop(rt, self._prepared, copies)
                shutil.rmtree(images, ignore_errors=True)
                raise
            if not leave_running:
                rt._channels.pop(sandbox_id, None)
                rt._usage.forget(sandbox_id)
                await rt.network.detach(sandbox_id)
                # runc removed the container and its cgroups; make sure of the cgroups.
                for cg in rt._target(sandbox_id).cgroups:
                    await cg.remove()
                mark("detach")
            mark.log("fork-dump" if leave_running else "hibernate", sandbox_id)
            return str(images)

    async def restore(
        self,
        sandbox_id: str,
        image: str,
        *,
        network: NetworkPolicy | None = None,
        origin: Origin | None = None,
    ) -> None:
        """``origin``: where the source's record, config and disk copy are when
        not in its sandbox dir (a memory snapshot's): always a new sandbox."""
        binary = self._binary()
        rt = self.rt
        images = Path(image)
        meta = checkpoint.Meta.load(images)
        box = rt._box(check_id(sandbox_id))
        in_place = meta.source == sandbox_id and origin is None
        if not in_place and not meta.with_disk:
            raise InvalidState("a hibernation checkpoint can only wake its own sandbox")
        mark = phases.Phases()
        async with rt._lock(sandbox_id):
            mark("lock")
            if in_place:
                if rt.ocicli.state_dir(sandbox_id).exists():
                    # Left by a wake that was cut off (a server crash): start over.
                    await self._stop_attempt(sandbox_id)
            elif self._prepared.get(sandbox_id) != images and (
                box.root.exists() or rt.ocicli.state_dir(sandbox_id).exists()
            ):
                raise InvalidState(f"sandbox {sandbox_id} already exists")
            policy = network or NetworkPolicy()
            # The rules need no process: they are made while criu works.
            rules = asyncio.ensure_future(rt.network.add_rules(sandbox_id, policy))
            try:
                try:
                    if not in_place and self._prepared.pop(sandbox_id, None) != images:
                        await fork_copies.clone_box(
                            rt, origin or Origin.of_fork(rt._box(meta.source), images),
                            sandbox_id, box, mark,
                        )  # fmt: skip
                    pid, start = await checkpoint.restore(
                        rt.ocicli, binary, sandbox_id, box, images, meta, mark
                    )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await rules  # finished before the cleanup removes them
                    raise
                await rules
                cgroup = rt._live_cgroup(sandbox_id)
                self._apply_limits(sandbox_id, box, cgroup)
                # Saved frozen (see checkpoint.dump), so restored frozen.
                cgroup.thaw()
                mark("limits, thaw")
                # The agent takes its socket while the link is made.
                await network_mod.together(
                    rt.network.attach(sandbox_id, pid, start, policy, rules_added=True),
                    checkpoint.hand_over(box, pid, meta.wake_fd),
                )
                mark("network, hand over")
            except BaseException as exc:
                if in_place:
                    # Back to hibernated: nothing of the attempt may stay running.
                    await self._stop_attempt(sandbox_id)
                else:
                    errors = await teardown.destroy(rt._target(sandbox_id))
                    if errors:
                        log.error("cleanup after failed restore of %s: %s", sandbox_id, errors)
                if isinstance(exc, RuntimeFailure | InvalidState) or not isinstance(exc, Exception):
                    raise
                raise RuntimeFailure(f"restoring sandbox {sandbox_id} failed: {exc}") from exc
            rt._channels[sandbox_id] = AgentClient(box.socket)
            if in_place:
                shutil.rmtree(images, ignore_errors=True)
            rt.timings[sandbox_id] = dict(mark.marks)
            mark.log("wake" if in_place else "restore", sandbox_id)

    def _apply_limits(self, sandbox_id: str, box: SandboxDir, cgroup: Cgroup) -> None:
        """The limits the sandbox has now (its record), not those of its bundle:
        runc creates the cgroup from config.json, which a later ``customize``
        (a pool hand-out, a resize) did not rewrite."""
        record = SandboxRecord.load(box.record)
        if record is None or record.vcpu <= 0:
            return  # a record from before vcpu was kept: the bundle's limits stay
        limits = Limits(
            cpu_quota=oci.cpu_quota(record.vcpu), cpu_period=oci.CPU_PERIOD,
            cpus=self.rt._cpus.pick(record.vcpu), memory=record.memory_mb * oci.MIB,
            no_swap=True, pids=record.pids_limit,
        )  # fmt: skip
        customize.set_limits(cgroup, limits, sandbox_id)

    async def recover(self, sandbox_id: str) -> str:
        """After a restart, finish what a checkpoint or restore cut off by a crash
        left, and say what the sandbox is now: ``running``, ``hibernated`` or ``gone``."""
        rt = self.rt
        box = rt._box(check_id(sandbox_id))
        async with rt._lock(sandbox_id):
            images = self.hibernated(sandbox_id)
            agent = await rt.ocicli.init_process(sandbox_id)
            wake_fd = checkpoint.parked_fd(box)
            if agent is not None and wake_fd is not None:
                # Cut off between park and hand-over: frozen, and deaf until given a socket.
                try:
                    with contextlib.suppress(OSError):
                        rt._live_cgroup(sandbox_id).thaw()
                    await checkpoint.hand_over(box, agent[0], wake_fd)
                except Exception as exc:
                    log.warning("recovering the parked agent of %s failed: %s", sandbox_id, exc)
                    agent = None if images is not None else agent
                else:
                    if images is not None:
                        shutil.rmtree(images, ignore_errors=True)
                        images = None
            if agent is not None:
                if images is not None:
                    # A wake whose container runs and answers: it is awake.
                    shutil.rmtree(images, ignore_errors=True)
                return "running"
            if images is not None:
                if rt.ocicli.state_dir(sandbox_id).exists():
                    await self._stop_attempt(sandbox_id)
                return "hibernated"
            return "gone"

    async def _stop_attempt(self, sandbox_id: str) -> None:
        rt = self.rt
        target = rt._target(sandbox_id)
        for cg in target.cgroups:
            await cg.kill_all()
        await rt.ocicli.delete(sandbox_id)
        await rt.network.detach(sandbox_id)
        for cg in target.cgroups:
            with contextlib.suppress(Exception):
                await cg.remove()

    async def discard(self, image: str) -> None:
        """Remove a fork's images once its copies are made (idempotent). The
        caller need not wait for the files (100 MB of pages: ~8 ms): they are
        renamed out of the way at once and removed in the background; what a
        crash leaves goes with the source's dir."""
        path = Path(image)
        if path.name.startswith("fork-") and path.parent.parent == self.rt.sandboxes_dir:
            trash = path.with_name(f"discarded-{path.name}")
            try:
                path.rename(trash)
            except FileNotFoundError:
                return
            task = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, trash, True))
            self._removing.add(task)
            task.add_done_callback(self._removing.discard)


class CheckpointMethods:
    """The Runtime protocol's checkpoint methods, for the Linux driver to inherit."""

    checkpoints: Checkpointer

    async def checkpoint(
        self, sandbox_id: str, *, leave_running: bool = False, copies: Sequence[str] = ()
    ) -> str:
        return await self.checkpoints.checkpoint(
            sandbox_id, leave_running=leave_running, copies=copies
        )

    async def restore_checkpoint(
        self, sandbox_id: str, image: str, *, network: NetworkPolicy | None = None
    ) -> None:
        await self.checkpoints.restore(sandbox_id, image, network=network)

    async def discard_checkpoint(self, image: str) -> None:
        await self.checkpoints.discard(image)

    async def snapshot_memory(self, sandbox_id: str, snapshot_id: str) -> int:
        from sandbank.runtime.linux import memory_snapshots

        return await memory_snapshots.take(self.checkpoints, sandbox_id, snapshot_id)

    async def restore_memory(self, snapshot_id: str, spec: SandboxSpec) -> None:
        from sandbank.runtime.linux import memory_snapshots

        await memory_snapshots.restore(self.checkpoints, snapshot_id, spec)

    def checkpoint_problem(self) -> str | None:
        return self.checkpoints.problem

    def hibernated_image(self, sandbox_id: str) -> str | None:
        image = self.checkpoints.hibernated(check_id(sandbox_id))
        return None if image is None else str(image)

    async def recover_checkpoint(self, sandbox_id: str) -> str:
        return await self.checkpoints.recover(sandbox_id)
