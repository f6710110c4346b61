"""An in-memory runtime: the executable spec of the Runtime contract, for
fast unit tests of the service. It runs nothing on the host.

Its channel understands a handful of commands (``echo``, ``true``, ``false``,
``exit N`` through ``bash -c``) and keeps files in a dict (directory trees,
batches, chmod/chown, find and watches over them: fake_files.py); its
background processes are in fake_jobs.py.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from sandbank.errors import (
    CheckpointUnsupported,
    DiskFull,
    FileNotFound,
    InvalidState,
    IsADirectory,
    RuntimeFailure,
    SandboxNotFound,
    SandboxUnavailable,
    SnapshotNotFound,
)
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    FileEntry,
    SandboxSpec,
    SandboxUsage,
)
from sandbank.runtime.fake_files import FakeFileTree
from sandbank.runtime.fake_files import resolve as _abs
from sandbank.runtime.fake_jobs import FakeJobs
from sandbank.runtime.fake_jobs import unwrap as _unwrap
from sandbank.runtime.fake_memory import FakeMemorySnapshots
from sandbank.runtime.fake_templates import FakeTemplates


@dataclass
class FakeSandbox:
    spec: SandboxSpec
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/home", "/home/user", "/root"})
    alive: bool = True
    paused: bool = False


class FakeChannel(FakeFileTree, FakeJobs):
    def __init__(self, box: FakeSandbox) -> None:
        self._box = box

    def _entry(self, path: str) -> FileEntry:
        return self._tree_entry(path)

    async def exec(self, spec: ExecSpec) -> ExecResult:
        if not self._box.alive:
            raise SandboxUnavailable("sandbox is not running")
        argv = _unwrap(spec.cmd)
        out, code = b"", 0
        if argv[0] == "echo":
            out = (" ".join(argv[1:]) + "\n").encode()
        elif argv[0] == "false":
            code = 1
        elif argv[0] == "exit":
            code = int(argv[1])
        elif argv[0] == "cat" and spec.stdin is not None:
            out = spec.stdin
        elif argv[0] != "true":
            return ExecResult(127, b"", f"{argv[0]}: command not found\n".encode(), 0.1, False)
        return ExecResult(code, out, b"", 0.1, False)

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        full = _abs(path)
        if full in self._box.dirs:
            raise IsADirectory(f"{full} is a directory")
        if full not in self._box.files:
            raise FileNotFound(f"{full} does not exist")
        yield self._box.files[full]

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        mode: int | None = None,
    ) -> FileEntry:
        full = _abs(path, user)
        if full in self._box.dirs:
            raise IsADirectory(f"{full} is a directory")
        data = b"".join([c async for c in chunks])
        parent = posixpath.dirname(full)
        while parent not in self._box.dirs:
            self._box.dirs.add(parent)
            parent = posixpath.dirname(parent)
        self._box.files[full] = data
        return self._entry(full)

    async def list_dir(self, path: str, depth: int = 1) -> list[FileEntry]:
        base = _abs(path)
        self._entry(base)
        names = [p for p in self._box.files.keys() | self._box.dirs if p != base]
        return [self._entry(p) for p in sorted(names) if posixpath.dirname(p) == base]

    async def stat(self, path: str) -> FileEntry:
        return self._entry(_abs(path))

    async def move(self, src: str, dst: str, *, user: str = "user") -> FileEntry:
        source, target = _abs(src, user), _abs(dst, user)
        if source not in self._box.files:
            raise FileNotFound(f"{source} does not exist")
        self._box.files[target] = self._box.files.pop(source)
        return self._entry(target)

    async def make_dir(self, path: str, *, user: str = "user") -> tuple[bool, FileEntry]:
        full = _abs(path, user)
        created = full not in self._box.dirs
        self._box.dirs.add(full)
        return created, self._entry(full)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        full = _abs(path)
        self._entry(full)
        self._box.files.pop(full, None)
        self._box.dirs.discard(full)


class FakeRuntime(FakeTemplates, FakeMemorySnapshots):
    name = "fake"

    def __init__(self, templates: tuple[str, ...] = ("base",)) -> None:
        super().__init__()
        self.boxes: dict[str, FakeSandbox] = {}
        self.template_names = templates
        #: Set to make the next create fail, to test the service's cleanup.
        self.fail_next_create: str | None = None
        self.destroyed: list[str] = []
        #: Snapshot id -> (files, dirs) of the disk copied.
        self.snapshots: dict[str, tuple[dict[str, bytes], set[str]]] = {}
        #: Bytes left on the "host" for snapshots; None: unlimited.
        self.snapshot_room: int | None = None
        #: Checkpoint images: name -> (source id, saved sandbox); set to refuse them.
        self.images: dict[str, tuple[str, FakeSandbox]] = {}
        self.checkpoint_unsupported: str | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, spec: SandboxSpec) -> None:
        if self.fail_next_create:
            message, self.fail_next_create = self.fail_next_create, None
            raise RuntimeFailure(message)
        self.boxes[spec.id] = FakeSandbox(spec)
        self.in_use[spec.template] = self.in_use.get(spec.template, 0) + 1

    async def customize(self, spec: SandboxSpec) -> None:
        box = self.boxes.get(spec.id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {spec.id} is not running")
        used = sum(len(v) for v in box.files.values())
        if spec.memory_mb * 2**20 < used:
            raise InvalidState(f"sandbox {spec.id} uses {used} bytes, above the new limit")
        box.spec = spec

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        box.spec = dataclasses.replace(box.spec, network=policy)

    async def destroy(self, sandbox_id: str) -> None:
        self.images.pop(f"{sandbox_id}/hib", None)
        if (box := self.boxes.pop(sandbox_id, None)) is not None:
            self.destroyed.append(sandbox_id)
            self.in_use[box.spec.template] -= 1

    async def pause(self, sandbox_id: str) -> None:
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        box.paused = True

    async def resume(self, sandbox_id: str) -> None:
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        box.paused = False

    async def stop_sandbox(self, sandbox_id: str) -> None:
        box = self.boxes.get(sandbox_id)
        if box is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        box.alive = box.paused = False
        box.__dict__.pop("_fake_jobs", None)

    async def start_sandbox(self, spec: SandboxSpec) -> None:
        box = self.boxes.get(spec.id)
        if box is None:
            raise SandboxNotFound(f"sandbox {spec.id} has no disk to start from")
        if self.fail_next_create:
            message, self.fail_next_create = self.fail_next_create, None
            raise RuntimeFailure(message)
        box.spec, box.alive, box.paused = spec, True, False

    async def disk_bytes(self, sandbox_id: str) -> int:
        box = self.boxes.get(sandbox_id)
        return 0 if box is None else sum(len(v) for v in box.files.values())

    async def snapshot(self, sandbox_id: str, snapshot_id: str) -> int:
        box = self.boxes.get(sandbox_id)
        if box is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        size = sum(len(v) for v in box.files.values())
        if self.snapshot_room is not None and size > self.snapshot_room:
            raise DiskFull(f"no room for a {size}-byte snapshot", needed_bytes=size)
        self.snapshots[snapshot_id] = (dict(box.files), set(box.dirs))
        return size

    async def restore(self, sandbox_id: str, snapshot_id: str) -> None:
        if snapshot_id not in self.snapshots:
            raise SnapshotNotFound(f"snapshot {snapshot_id} has no files")
        files, dirs = self.snapshots[snapshot_id]
        box = self.boxes.get(sandbox_id)
        if box is not None and box.alive:
            raise InvalidState(f"sandbox {sandbox_id} is running; stop it first")
        if box is None:
            spec = SandboxSpec(sandbox_id, "base", 1, 512, 1, sandbox_id)
            box = self.boxes[sandbox_id] = FakeSandbox(spec, alive=False)
        box.files, box.dirs = dict(files), set(dirs)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)
        self.memory_images.pop(snapshot_id, None)

    async def snapshot_ids(self) -> set[str]:
        return set(self.snapshots)

    def checkpoint_problem(self) -> str | None:
        return self.checkpoint_unsupported

    async def checkpoint(
        self, sandbox_id: str, *, leave_running: bool = False, copies: Sequence[str] = ()
    ) -> str:
        if self.checkpoint_unsupported:
            raise CheckpointUnsupported(self.checkpoint_unsupported)
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        image = f"{sandbox_id}/{'fork-' + str(len(self.images)) if leave_running else 'hib'}"
        self.images[image] = (sandbox_id, copy.deepcopy(box))
        box.alive = leave_running
        return image

    async def restore_checkpoint(
        self, sandbox_id: str, image: str, *, network: NetworkPolicy | None = None
    ) -> None:
        source, saved = self.images[image]
        box = copy.deepcopy(saved)
        box.spec = dataclasses.replace(box.spec, id=sandbox_id, network=network)
        self.boxes[sandbox_id] = box
        if source == sandbox_id:
            del self.images[image]

    async def discard_checkpoint(self, image: str) -> None:
        self.images.pop(image, None)

    def hibernated_image(self, sandbox_id: str) -> str | None:
        image = f"{sandbox_id}/hib"
        return image if image in self.images else None

    async def recover_checkpoint(self, sandbox_id: str) -> str:
        if await self.is_alive(sandbox_id):
            return "running"
        return "hibernated" if self.hibernated_image(sandbox_id) else "gone"

    async def running(self) -> set[str]:
        return set(self.boxes)

    async def is_alive(self, sandbox_id: str) -> bool:
        box = self.boxes.get(sandbox_id)
        return box is not None and box.alive

    async def adopt(self, sandbox_id: str) -> bool:
        return await self.is_alive(sandbox_id)

    def channel(self, sandbox_id: str) -> FakeChannel:
        box = self.boxes.get(sandbox_id)
        if box is None:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        return FakeChannel(box)

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        box = self.boxes[sandbox_id]
        spec = box.spec
        return SandboxUsage(
            cpu_percent=0.0,
            cpu_usage_seconds=0.0,
            memory_bytes=sum(len(v) for v in box.files.values()),
            memory_limit_bytes=spec.memory_mb * 2**20,
            disk_bytes=sum(len(v) for v in box.files.values()),
            disk_limit_bytes=spec.disk_gb * 2**30,
            pids=1,
            pids_limit=spec.pids_limit,
        )

    async def endpoint(self, sandbox_id: str, port: int) -> tuple[str, int]:
        """The host's loopback: a test serves the "sandbox's" port there itself."""
        box = self.boxes.get(sandbox_id)
        if box is None or not box.alive:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
        return "127.0.0.1", port

    async def leftovers(self, sandbox_id: str) -> list[str]:
        return [f"fake sandbox {sandbox_id}"] if sandbox_id in self.boxes else []
