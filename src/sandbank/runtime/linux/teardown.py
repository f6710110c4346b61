"""Ordered, idempotent removal of a sandbox, and the check that nothing is left.

Every step runs even when an earlier one failed: a half-created sandbox (or
one whose server died mid-teardown) must still be fully removable, and the
failure of one step must not strand the resources later steps would free.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sandbank.runtime.linux import disk, fsflags, mounts
from sandbank.runtime.linux.cgroups import Cgroup, CgroupLayout
from sandbank.runtime.linux.layout import SandboxDir, SandboxRecord
from sandbank.runtime.linux.network import SandboxNetworks
from sandbank.runtime.linux.ocicli import OciCli

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Everything of one sandbox on the host, from every source of truth we have."""

    sandbox_id: str
    box: SandboxDir
    oci: OciCli
    cgroups: tuple[Cgroup, ...]
    network: SandboxNetworks | None = None


def cgroup_candidates(
    sandbox_id: str, layout: CgroupLayout, oci: OciCli, box: SandboxDir, default_parent: str
) -> tuple[Cgroup, ...]:
    """The sandbox's cgroup path as recorded by us, by the OCI runtime, and as we would name it now.

    A server restarted in another cgroup computes a different default; the
    record and the runtime's state still point at the real one.
    """
    paths: list[str] = []
    record = SandboxRecord.load(box.record)
    if record is not None:
        paths.append(record.cgroups_path)
    state = oci.saved_state(sandbox_id) or {}
    for key, host_dir in (state.get("cgroup_paths") or {}).items():
        hierarchy = layout.hierarchy(key) if key else None
        if hierarchy is None:
            hierarchy = next((h for h in layout.hierarchies if h.unified), None)
        if hierarchy is None:
            continue
        try:
            rel = Path(host_dir).relative_to(hierarchy.mountpoint)
        except ValueError:
            continue
        paths.append("/" + rel.as_posix())
    paths.append(f"{default_parent.rstrip('/')}/sandbank/{sandbox_id}")
    # Never a parent: a wrong path here would kill and remove far more than one sandbox.
    unique = dict.fromkeys(p for p in paths if p.rstrip("/").rsplit("/", 1)[-1] == sandbox_id)
    return tuple(layout.cgroup(p) for p in unique)


async def _step(name: str, action: Callable[[], Awaitable[object]], errors: list[str]) -> None:
    try:
        await action()
    except Exception as exc:
        log.warning("teardown step %s failed: %s", name, exc)
        errors.append(f"{name}: {exc}")


async def destroy(target: Target, keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove everything but the files of the sandbox dir named in ``keep``
    (a stop keeps the disk image); returns the errors of steps that failed."""
    errors: list[str] = []
    box, oci, sid = target.box, target.oci, target.sandbox_id

    async def stop_container() -> None:
        if not oci.state_dir(sid).exists():
            return
        # Killed through its cgroups first (no process to spawn): the OCI runtime's
        # own `kill --all` costs a process, and `delete --force` of a running
        # container sleeps 100 ms between its checks. Only then is it deleted.
        survivors: set[int] = set()
        for cg in target.cgroups:
            survivors |= await cg.kill_all()
        if survivors or not target.cgroups:
            await oci.kill_all(sid)
            await oci.delete(sid)
        else:
            await oci.delete_stopped(sid)

    async def kill_leftovers() -> None:
        for cg in target.cgroups:
            survivors = await cg.kill_all()
            if survivors:
                raise RuntimeError(f"processes {sorted(survivors)} survived SIGKILL in {cg.path}")

    async def forget_state() -> None:
        # delete --force fails on a corrupt state dir; nothing runs any more, drop it.
        state = oci.state_dir(sid)
        if state.exists():
            await oci.delete(sid)
        if state.exists():
            shutil.rmtree(state)

    async def unmount_all() -> None:
        # rootfs first (it holds the disk busy), then the disk, then anything odd.
        for point in (box.rootfs, box.disk):
            await mounts.unmount(point)
        for m in mounts.under(box.root):
            await mounts.unmount(m.point)

    async def release_loops() -> None:
        await disk.detach_loops(box.image)

    async def remove_cgroups() -> None:
        for cg in target.cgroups:
            left = await cg.remove()
            if left:
                raise RuntimeError(f"cgroup dirs still busy: {[str(p) for p in left]}")

    async def remove_dir() -> None:
        if not box.root.exists():
            return
        # Never recurse into something still mounted: it could be the template.
        still = mounts.under(box.root)
        if still:
            raise RuntimeError(f"not removing {box.root}: {[str(m.point) for m in still]} mounted")
        fsflags.unseal(box.run)
        if not keep:
            await asyncio.to_thread(shutil.rmtree, box.root)
            return
        for entry in box.root.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                await asyncio.to_thread(shutil.rmtree, entry)
            else:
                entry.unlink()

    await _step("stop container", stop_container, errors)
    await _step("kill processes", kill_leftovers, errors)
    # After the processes: their namespace, and with it the link's inner end, is gone.
    network = target.network
    if network is not None:
        await _step("remove network", lambda: network.detach(sid), errors)
    await _step("forget runtime state", forget_state, errors)
    await _step("unmount", unmount_all, errors)
    await _step("detach loop devices", release_loops, errors)
    await _step("remove cgroups", remove_cgroups, errors)
    await _step("remove sandbox dir", remove_dir, errors)
    return errors


def leftovers(target: Target) -> list[str]:
    """What of the sandbox still exists on the host; empty once it is gone."""
    box = target.box
    found: list[str] = []
    for cg in target.cgroups:
        found.extend(f"process {pid} in cgroup {cg.path}" for pid in sorted(cg.procs()))
    found.extend(f"mount {m.point} ({m.fstype})" for m in mounts.under(box.root))
    found.extend(f"loop device {dev} for {box.image}" for dev in disk.loops_backed_by(box.image))
    for cg in target.cgroups:
        found.extend(f"cgroup dir {d}" for d in cg.existing())
    if target.oci.state_dir(target.sandbox_id).exists():
        found.append(f"OCI runtime state {target.oci.state_dir(target.sandbox_id)}")
    if box.root.exists():
        found.append(f"sandbox dir {box.root}")
    return found
