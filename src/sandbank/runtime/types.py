"""The values that cross the runtime contract (``base.py``): what a sandbox,
an exec, a background process, a file, a template is made of, and what comes
back. Plain frozen data classes, apart from the Protocols so each reads on its
own; import them from ``base.py`` or here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


StdinMode = Literal["none", "bytes", "open"]
OutputKind = Literal["start", "stdout", "stderr", "truncated", "exit"]


@dataclass(frozen=True)
class JobSpec:
    """A background process: started, then attached to, waited for, fed and
    signalled by pid, from any client, for as long as the sandbox runs."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    tag: str | None = None
    #: Seconds; ``None`` (or 0) means no limit. On expiry the group is killed.
    timeout: float | None = None
    #: ``none``: /dev/null; ``bytes``: ``stdin_data`` up front; ``open``: fed
    #: later with ``send_stdin`` until closed.
    stdin: StdinMode = "none"
    stdin_data: bytes | None = None
    #: Bytes kept of each stream (the head); ``None``: the agent's cap (16 MiB).
    max_output: int | None = None
    #: ``(cols, rows)``: run on a pseudo-terminal of that size (one output
    #: stream, the last 512 KiB kept; input with ``send_stdin``, never closed);
    #: an empty ``cmd`` is then the user's login shell.
    pty: tuple[int, int] | None = None
    #: Variables that ``jobs`` reports with their values (those given with the
    #: command); the others are listed by name only.
    show_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobInfo:
    pid: int
    tag: str | None
    cmd: list[str]
    cwd: str
    env_keys: list[str]
    user: str
    started_at: float
    running: bool
    ended_at: float | None = None
    exit_code: int | None = None
    #: The signal that killed it (``exit_code`` is then 128+N).
    signal: int | None = None
    timed_out: bool = False
    #: ``none``, ``bytes``, ``open`` or ``closed``.
    stdin: str = "none"
    #: Bytes kept so far, both streams: where an ``attach`` ends today.
    output_bytes: int = 0
    #: The streams that hit their cap (what came later was dropped).
    truncated: list[str] = field(default_factory=list)
    #: ``(cols, rows)`` of its terminal, if it runs on one.
    pty: tuple[int, int] | None = None
    #: The variables of ``JobSpec.show_env`` with their values.
    env: dict[str, str] = field(default_factory=dict)
    #: ``background`` (``start``) or ``foreground`` (``run``).
    kind: str = "background"


@dataclass(frozen=True)
class OutputEvent:
    """One event of ``attach``: a chunk of ``stdout``/``stderr`` at ``offset``
    (bytes of both streams together; resume at ``offset + len(data)``), a
    ``truncated`` marker naming ``stream``, or the final ``exit`` with ``info``.
    ``run`` starts with a ``start`` event carrying ``info``."""

    kind: OutputKind
    data: bytes = b""
    offset: int = 0
    stream: str | None = None
    info: JobInfo | None = None


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
    #: What the tree was made from: the recipe's hash for ``recipe`` templates,
    #: the spec's content hash (with its base's) for ``built``, the image's for ``image``.
    recipe_hash: str | None = None
    size_bytes: int | None = None
    #: ``recipe`` (debootstrap), ``built`` (a spec built on ``base``), ``image``
    #: (imported) or ``snapshot`` (a snapshot's layer on ``base``).
    kind: str = "recipe"
    base: str | None = None
    aliases: tuple[str, ...] = ()
    #: What a sandbox of the template gets: variables, a command started in the
    #: background, and a command that must exit 0 (within ``ready_timeout`` s)
    #: before the create returns.
    env: dict[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float = 60.0
    workdir: str | None = None
    user: str | None = None
    built_at: float | None = None
    #: An imported image's Entrypoint + Cmd, as recorded (``start_cmd`` is what runs).
    cmd: tuple[str, ...] = ()
