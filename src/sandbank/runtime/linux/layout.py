"""Where a sandbox's pieces live on the host, and the record a later server reads.

    <data_dir>/sandboxes/<id>/
        config.json    OCI bundle config
        runtime.json   what teardown needs even if this server is gone (cgroup path, ...)
        disk.img       sparse ext4: the sandbox's writable layer and disk limit
        disk/          its mount point (upper/ and work/ of the overlay)
        rootfs/        the merged overlay: the sandbox's /
        run/           bind-mounted at /run/sandbank: the agent's socket
        agent.log      the agent's stdout/stderr (and the OCI runtime's errors)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from sandbank.errors import ValidationFailed
from sandbank.protocol.agent import SOCKET_NAME

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: AF_UNIX paths are limited to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def is_valid_id(sandbox_id: str) -> bool:
    return bool(_ID.match(sandbox_id))


def check_id(sandbox_id: str) -> str:
    """Ids become path components and container names: refuse anything else."""
    if not is_valid_id(sandbox_id):
        raise ValidationFailed(f"invalid sandbox id {sandbox_id!r}")
    return sandbox_id


@dataclass(frozen=True)
class SandboxDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def record(self) -> Path:
        return self.root / "runtime.json"

    @property
    def image(self) -> Path:
        return self.root / "disk.img"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run / SOCKET_NAME

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    def log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode(errors="replace").strip()
        except OSError:
            return ""


@dataclass(frozen=True)
class SandboxRecord:
    """Persisted in runtime.json before anything is created on the host, and
    rewritten when ``customize`` changes the sandbox. Fields added later have
    defaults, so records of sandboxes started by an older server still load."""

    id: str
    cgroups_path: str
    lower: str
    oci_binary: str
    disk_gb: int
    memory_mb: int
    pids_limit: int
    created_at: float
    vcpu: float = 0.0
    hostname: str = ""

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SandboxRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (OSError, ValueError, KeyError, TypeError):
            return None
