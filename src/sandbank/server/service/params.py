"""Parameters of service calls, and sandbox identifiers."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field

from sandbank.protocol.network import NetworkPolicy

_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 16


def new_sandbox_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def short_id(sandbox_id: str) -> str:
    return f"sbx-{sandbox_id[:6]}"


@dataclass(frozen=True)
class CreateParams:
    template: str = "base"
    name: str | None = None
    vcpu: float | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    region: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    #: Id or name of a snapshot whose disk the sandbox starts from.
    snapshot: str | None = None
    idle_timeout: int | None = None
    on_timeout: str | None = None
    auto_resume: bool = False


@dataclass(frozen=True)
class Resolved:
    """A create's parameters with the operator's defaults filled in and checked."""

    template: str
    name: str | None
    vcpu: float
    memory_mb: int
    disk_gb: int
    region: str
    timeout: int
    env: dict[str, str]
    metadata: dict[str, str]
    network: NetworkPolicy = field(default_factory=NetworkPolicy)

    def hostname(self, sandbox_id: str) -> str:
        name = self.display_name(sandbox_id)
        return name if is_hostname(name) else f"sandbox-{sandbox_id[:6]}"

    def display_name(self, sandbox_id: str) -> str:
        return self.name or f"sandbox-{sandbox_id[:6]}"


@dataclass(frozen=True)
class ExecParams:
    cmd: list[str] | None = None
    command: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    timeout: float = 60
    stdin: bytes | None = None


def is_hostname(name: str) -> bool:
    allowed = set(string.ascii_lowercase + string.digits + "-")
    return 0 < len(name) <= 63 and set(name) <= allowed and not name.startswith("-")
