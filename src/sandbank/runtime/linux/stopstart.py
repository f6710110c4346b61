"""Stop and start: the container goes, its disk image stays.

A stopped sandbox is its directory with only these left (see docs/storage.md):

    <data_dir>/sandboxes/<id>/
        runtime.json   rewritten by the next start
        disk.img       the writable layer: unmounted, no loop device
        agent.log      the last run's log, for diagnosis

No process, cgroup, mount, loop device, veth, nftables rule or OCI runtime
state remains. A start builds the container again exactly as a create does,
on that image instead of a fresh one: same id and hostname, the egress policy
it is given, and a new address (the /30 is picked afresh).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, cast

from sandbank.errors import RuntimeFailure, SandboxNotFound
from sandbank.runtime.base import SandboxSpec
from sandbank.runtime.linux import hostread, mounts, snapshots, teardown
from sandbank.runtime.linux.layout import check_id

if TYPE_CHECKING:
    from sandbank.runtime.linux.driver import LinuxRuntime

log = logging.getLogger(__name__)

#: What of a sandbox's directory a stop keeps.
KEEP = frozenset({"disk.img", "runtime.json", "agent.log"})


async def stop(rt: LinuxRuntime, sandbox_id: str) -> None:
    async with rt._lock(check_id(sandbox_id)):
        await _stop_locked(rt, sandbox_id)


async def _stop_locked(rt: LinuxRuntime, sandbox_id: str) -> None:
    box = rt._box(sandbox_id)
    if not box.image.is_file():
        raise SandboxNotFound(f"sandbox {sandbox_id} has no disk on this host")
    rt._channels.pop(sandbox_id, None)
    hostread.retire(box.socket)
    rt._usage.forget(sandbox_id)
    rt.timings.pop(sandbox_id, None)
    rt._thaw_v1(sandbox_id)
    target = rt._target(sandbox_id)
    errors = await teardown.destroy(target, keep=KEEP)
    left = [x for x in teardown.leftovers(target) if not x.startswith("sandbox dir")]
    left += await rt.network.leftovers(sandbox_id)
    if left:
        detail = "; ".join(left) + (" (errors: " + "; ".join(errors) + ")" if errors else "")
        raise RuntimeFailure(f"sandbox {sandbox_id} was not fully stopped: {detail}")


async def start(rt: LinuxRuntime, spec: SandboxSpec) -> None:
    box = rt._box(spec.id)
    async with rt._lock(check_id(spec.id)):
        if not box.image.is_file():
            raise SandboxNotFound(f"sandbox {spec.id} has no disk to start from")
        if rt.ocicli.state_dir(spec.id).exists() or mounts.under(box.root):
            # Left over from a start the server did not see through.
            await _stop_locked(rt, spec.id)
        lower = rt.store.lowers(spec.template)
        started = time.monotonic()
        try:
            await rt._build(spec, box, lower, lambda _phase: None)
        except BaseException as exc:
            detail = box.log_tail()
            errors = await teardown.destroy(rt._target(spec.id), keep=KEEP)
            if errors:
                log.error("cleanup after failed start of %s: %s", spec.id, errors)
            if not isinstance(exc, Exception):
                raise
            msg = f"starting sandbox {spec.id} failed (its disk is kept): {exc}"
            if detail:
                msg += f"\nagent.log:\n{detail}"
            raise RuntimeFailure(msg) from exc
        log.debug("started %s in %.1f ms", spec.id, (time.monotonic() - started) * 1000)


class DiskLifecycle:
    """The Runtime methods about a sandbox's disk beyond create and destroy:
    stop/start (this module) and snapshots (``snapshots.py``). A base class of
    ``LinuxRuntime``, so the driver only names it."""

    @property
    def _rt(self) -> LinuxRuntime:
        return cast("LinuxRuntime", self)

    async def stop_sandbox(self, sandbox_id: str) -> None:
        await stop(self._rt, sandbox_id)

    async def start_sandbox(self, spec: SandboxSpec) -> None:
        await start(self._rt, spec)

    async def disk_bytes(self, sandbox_id: str) -> int:
        return snapshots.allocated(self._rt._box(sandbox_id).image)

    async def snapshot(self, sandbox_id: str, snapshot_id: str) -> int:
        return await snapshots.take(self._rt, sandbox_id, snapshot_id)

    async def restore(self, sandbox_id: str, snapshot_id: str) -> None:
        await snapshots.restore(self._rt, sandbox_id, snapshot_id)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await snapshots.delete(self._rt, snapshot_id)

    async def snapshot_ids(self) -> set[str]:
        return await snapshots.ids(self._rt)
