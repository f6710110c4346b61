"""The contract every runtime driver meets (Linux/OCI today; a microVM later).

The service layer talks only to these types. A driver creates and destroys
sandboxes and reports their resource use; everything that happens *inside* a
sandbox (exec, files) goes through a ``SandboxChannel`` the driver hands out
(for the Linux driver: the agent's unix socket).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sandbank.protocol.network import NetworkPolicy

FileType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a driver needs to start one sandbox."""

    id: str
    template: str
    vcpu: float
    memory_mb: int
    disk_gb: int
    hostname: str
    pids_limit: int = 1024
    env: dict[str, str] = field(default_factory=dict)
    #: Egress policy (a sandbox always has its own network namespace and
    #: address); None: the default at create, unchanged at customize.
    network: NetworkPolicy | None = None


@dataclass(frozen=True)
class ExecSpec:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    #: Seconds; ``None`` means no limit.
    timeout: float | None = 60.0
    stdin: bytes | None = None
    #: Bytes kept of each of stdout and stderr; the rest is dropped (``truncated``).
    max_output: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: float
    timed_out: bool
    pid: int | None = None
    truncated: bool = False


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: FileType
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: float
    symlink_target: str | None = None


@dataclass(frozen=True)
class SandboxUsage:
    """Resource use read from the kernel's accounting."""

    cpu_percent: float
    cpu_usage_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int
    pids: int
    pids_limit: int


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    ready: bool
    recipe_hash: str | None = None
    size_bytes: int | None = None


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

    async def running(self) -> set[str]:
        """Ids of every sandbox this driver has anything of on the host."""
        ...

    async def is_alive(self, sandbox_id: str) -> bool: ...

    async def adopt(self, sandbox_id: str) -> bool:
        """After a server restart: take over a running sandbox. False if it is not usable."""
        ...

    def channel(self, sandbox_id: str) -> SandboxChannel: ...

    async def usage(self, sandbox_id: str) -> SandboxUsage: ...

    async def endpoint(self, sandbox_id: str, port: int) -> tuple[str, int]:
        """Where the host reaches TCP ``port`` of the running sandbox (preview URLs)."""
        ...

    async def leftovers(self, sandbox_id: str) -> list[str]:
        """What of this sandbox still exists on the host (empty after destroy)."""
        ...
