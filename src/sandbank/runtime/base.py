"""The contract every runtime driver meets (Linux/OCI today; a microVM later).

The service layer talks only to these types. A driver creates and destroys
sandboxes and reports their resource use; everything that happens *inside* a
sandbox (exec, files) goes through a ``SandboxChannel`` the driver hands out
(for the Linux driver: the agent's unix socket). The values these take and
return are data classes in ``types.py``, re-exported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.types import (
    ExecResult,
    ExecSpec,
    FileEntry,
    FileType,
    JobInfo,
    JobSpec,
    OutputEvent,
    OutputKind,
    SandboxSpec,
    SandboxUsage,
    StdinMode,
    TemplateInfo,
)

__all__ = [
    "ExecResult",
    "ExecSpec",
    "FileEntry",
    "FileType",
    "JobInfo",
    "JobSpec",
    "OutputEvent",
    "OutputKind",
    "Runtime",
    "SandboxChannel",
    "SandboxSpec",
    "SandboxUsage",
    "StdinMode",
    "TemplateInfo",
]


class SandboxChannel(Protocol):
    """Operations inside one running sandbox. Paths are sandbox paths:
    absolute, or relative to the user's home; never resolved on the host."""

    async def exec(self, spec: ExecSpec) -> ExecResult: ...

    def read_file(self, path: str) -> AsyncIterator[bytes]:
        """Stream a file; raises before the first chunk if it cannot be read."""
        ...

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        mode: int | None = None,
    ) -> FileEntry: ...

    async def list_dir(self, path: str, depth: int = 1) -> list[FileEntry]: ...

    async def stat(self, path: str) -> FileEntry: ...

    async def move(self, src: str, dst: str, *, user: str = "user") -> FileEntry: ...

    async def make_dir(self, path: str, *, user: str = "user") -> tuple[bool, FileEntry]: ...

    async def remove(self, path: str, *, recursive: bool = False) -> None: ...

    # Background processes: unknown pids raise NotFound, operations that need a
    # running process raise Conflict once it has ended (with its exit code).

    async def start(self, spec: JobSpec) -> JobInfo: ...

    def run(self, spec: JobSpec) -> AsyncIterator[OutputEvent]:
        """A foreground process: ``start`` whose output follows at once, led by a
        ``start`` event with its info. Closing the iterator before the ``exit``
        event (or losing the server) kills its process group."""
        ...

    async def jobs(self) -> list[JobInfo]:
        """Processes started with ``start`` or ``run``, running or ended (kept 10 minutes)."""
        ...

    def attach(self, pid: int, offset: int = 0, follow: bool = True) -> AsyncIterator[OutputEvent]:
        """Output from ``offset``, then live output, then an ``exit`` event; without
        ``follow`` it stops at what exists (no ``exit`` event if still running).
        Stopping early never affects the process."""
        ...

    async def wait(self, pid: int, timeout: float | None = None) -> JobInfo:
        """Block until the process ends; ``Timeout`` after ``timeout`` seconds."""
        ...

    async def send_stdin(self, pid: int, data: bytes, close: bool = False) -> None: ...

    async def signal(self, pid: int, sig: int | str) -> None:
        """Signal the process's whole group (a terminal's: its whole session);
        ``sig`` is a number or a name."""
        ...

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        """Set the window size of a process's terminal (Conflict if it has none)."""
        ...


class Runtime(Protocol):
    """A sandbox driver. All methods are idempotent where it makes sense:
    ``destroy`` of a missing sandbox succeeds, ``leftovers`` of a destroyed one
    is empty."""

    name: str

    async def start(self) -> None:
        """Prepare the host (directories, agent code); called once at server start."""
        ...

    async def close(self) -> None: ...

    async def ensure_template(
        self, name: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        """Make the template ready (build it if needed); raises TemplateNotFound."""
        ...

    async def templates(self) -> list[TemplateInfo]: ...

    async def template(self, name: str) -> TemplateInfo:
        """One template by name or alias; TemplateNotFound lists those that exist."""
        ...

    async def capture_template(self, sandbox_id: str, info: TemplateInfo) -> TemplateInfo:
        """Make what the (paused) sandbox changed over its template a new read-only
        template ``info.name`` stacked on ``info.base``, with ``info``'s settings;
        replaces an older template of that name (sandboxes on it keep their tree)."""
        ...

    async def template_from_snapshot(self, snapshot_id: str, info: TemplateInfo) -> TemplateInfo:
        """Make the writable layer kept in snapshot ``snapshot_id`` a new read-only
        template ``info.name`` stacked on ``info.base`` (the snapshot's template),
        with ``info``'s settings; the same ``info.recipe_hash`` keeps the tree there.
        SnapshotNotFound if the snapshot has no files here."""
        ...

    async def import_template(
        self, name: str, archive: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        """A template from an OCI image archive on the host (``docker save`` or OCI
        layout tar); raises ValidationFailed for an unusable image."""
        ...

    async def delete_template(self, name: str) -> None:
        """Remove a template and its aliases; InvalidState while a sandbox or
        another template uses it."""
        ...

    async def alias_template(self, name: str, alias: str) -> TemplateInfo:
        """Let ``alias`` name template ``name`` (moving it if it named another)."""
        ...

    async def unalias_template(self, name: str, alias: str) -> None:
        """Remove ``alias`` of template ``name``; TemplateNotFound if it has no such alias."""
        ...

    async def create(self, spec: SandboxSpec) -> None:
        """Start a sandbox and return once its channel answers."""
        ...

    async def customize(self, spec: SandboxSpec) -> None:
        """Give the running sandbox ``spec.id`` the rest of ``spec``: CPU, memory
        and pids limits, hostname. The sandbox was started from a spec with the
        same template and disk size (a pre-started one being handed out);
        live resizing uses this too. Raises InvalidState when the new memory
        limit is below what the sandbox uses now. A ``spec.network`` replaces the
        egress policy (None leaves it)."""
        ...

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a running sandbox's egress policy atomically: new connections
        follow it at once, open ones go on."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Ordered, idempotent teardown; raises RuntimeFailure if anything remains."""
        ...

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox; returns once all are frozen.
        Memory and processes stay as they are. Idempotent."""
        ...

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox; idempotent."""
        ...

    # Stop and start: the container goes, its disk image stays (runtime/linux/stopstart.py).

    async def stop_sandbox(self, sandbox_id: str) -> None:
        """End every process and free everything but the disk image; idempotent.
        A paused sandbox is stopped as it is."""
        ...

    async def start_sandbox(self, spec: SandboxSpec) -> None:
        """Make the container of a stopped sandbox again on its kept disk image
        (from ``spec``: limits, hostname, egress policy; a new address) and return
        once its channel answers. On failure the sandbox is left stopped."""
        ...

    async def disk_bytes(self, sandbox_id: str) -> int:
        """Host bytes the sandbox's disk image occupies (0 when it has none)."""
        ...

    # Snapshots: copies of a sandbox's disk image kept by the runtime.

    async def snapshot(self, sandbox_id: str, snapshot_id: str) -> int:
        """Copy the disk of a running, paused or stopped sandbox consistently
        (briefly frozen while it is copied); returns the copy's host bytes.
        DiskFull, with nothing left behind, when the host has no room."""
        ...

    async def restore(self, sandbox_id: str, snapshot_id: str) -> None:
        """Make a copy of the snapshot the disk of ``sandbox_id``, which is stopped
        or does not exist yet (then ``start_sandbox`` creates it from there)."""
        ...

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot's files; idempotent."""
        ...

    async def snapshot_ids(self) -> set[str]:
        """Ids of every snapshot with files on the host."""
    # Checkpoints (hibernate, wake, fork; see docs/checkpoints.md).

    def checkpoint_problem(self) -> str | None:
        """Why checkpoints cannot work on this host, or None when they can."""
        ...

    async def checkpoint(
        self, sandbox_id: str, *, leave_running: bool = False, copies: Sequence[str] = ()
    ) -> str:
        """Save the running sandbox's processes and memory; returns the image.
        Without ``leave_running`` (hibernation) the sandbox stops running and
        holds no memory; its disk stays. With it, the image also carries a copy
        of the disk and can make new sandboxes; ``copies`` names those the
        caller will restore it as (a runtime may prepare them meanwhile; a
        failed checkpoint leaves none of them). Raises CheckpointFailed (the
        sandbox is then left running as it was), CheckpointUnsupported."""
        ...

    async def restore_checkpoint(
        self, sandbox_id: str, image: str, *, network: NetworkPolicy | None = None
    ) -> None:
        """Wake the image's own sandbox in place, or start ``sandbox_id`` as a new
        copy of it (own disk copy and address) from a ``leave_running`` image."""
        ...

    async def discard_checkpoint(self, image: str) -> None:
        """Remove a ``leave_running`` image once its copies are made; idempotent."""
        ...

    async def snapshot_memory(self, sandbox_id: str, snapshot_id: str) -> int:
        """Snapshot ``snapshot_id`` of a running sandbox with its processes and
        memory (a ``leave_running`` checkpoint and a disk copy of one freeze),
        kept until ``delete_snapshot``; returns its host bytes. The sandbox runs
        on. InvalidState when it is paused; CheckpointFailed, CheckpointUnsupported."""
        ...

    async def restore_memory(self, snapshot_id: str, spec: SandboxSpec) -> None:
        """Start ``spec.id`` (which must not exist on the host) from a memory
        snapshot: its processes, memory and a copy of its disk, with ``spec``'s
        limits and egress policy and an address of its own."""
        ...

    def hibernated_image(self, sandbox_id: str) -> str | None:
        """The image of a hibernated sandbox (after a restart too), if any."""
        ...

    async def recover_checkpoint(self, sandbox_id: str) -> str:
        """After a restart: finish what a checkpoint or restore cut off by a crash
        left (a frozen sandbox whose agent let go of its socket is thawed and
        given one) and say what the sandbox is: ``running`` (its channel
        answers), ``hibernated`` (complete images, nothing runs) or ``gone``."""
        ...

    async def running(self) -> set[str]:
        """Ids of every sandbox this driver has anything of on the host."""
        ...

    async def is_alive(self, sandbox_id: str) -> bool: ...

    async def adopt(self, sandbox_id: str) -> bool:
        """After a server restart: take over a running or paused sandbox. False if
        it is not usable. A paused (frozen) sandbox is adopted without asking its
        agent, which cannot answer until resumed."""
        ...

    def channel(self, sandbox_id: str) -> SandboxChannel: ...

    async def usage(self, sandbox_id: str) -> SandboxUsage: ...

    async def endpoint(self, sandbox_id: str, port: int) -> tuple[str, int]:
        """Where the host reaches TCP ``port`` of the running sandbox (preview URLs)."""
        ...

    async def leftovers(self, sandbox_id: str) -> list[str]:
        """What of this sandbox still exists on the host (empty after destroy)."""
        ...
