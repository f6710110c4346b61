"""Which CRIU the OCI runtime uses for checkpoints, and whether it works here.

``scripts/criu.sh`` leaves a working criu either on PATH (one that passes
``criu check`` on this kernel) or, built from the pinned upstream release, at
``.cache/criu/bin/criu`` in the project. The runtime checks it once at start:
without a working criu, hibernate and fork answer an error that says why, and
everything else works as before.

CRIU options that runc has no flag for go in a configuration file named by
``CRIU_CONFIG_FILE`` in runc's environment, which criu (started by runc as
``criu swrk``) reads before runc's own requests.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from sandbank.runtime import _proc

#: Where scripts/criu.sh installs its build, relative to the project root.
PROJECT_BINARY = Path(".cache/criu/bin/criu")
#: Where that build keeps its cache of kernel facts when /run is not a tmpfs
#: (criu reads it as root, so it must be a directory only root can write to).
KDAT_DIR = Path("/dev/shm/sandbank-criu")


def prepare_kdat_dir(path: Path = KDAT_DIR) -> str | None:
    """Make ``path`` a root-only directory; why it cannot be, or None."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot make {path}: {exc}"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        return (
            f"{path} is not a directory only root can write to (criu would trust a "
            "cache of kernel facts there); remove it"
        )
    return None


def project_root() -> Path:
    # src/sandbank/runtime/linux/criu.py -> the checkout.
    return Path(__file__).resolve().parents[4]


def candidates(configured: str | None = None) -> list[str]:
    """The configured binary alone, else the project's build, then PATH's."""
    if configured:
        return [configured]
    found: list[str] = []
    local = project_root() / PROJECT_BINARY
    if local.is_file():
        found.append(str(local))
    system = shutil.which("criu")
    if system:
        found.append(system)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Criu:
    """A criu binary, or why there is none that works (``problem``)."""

    binary: str | None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.binary is not None and self.problem is None


async def detect(configured: str | None = None) -> Criu:
    """The first candidate that passes ``criu check``."""
    problem = prepare_kdat_dir()
    if problem is not None:
        return Criu(None, problem)
    tried: list[str] = []
    for binary in candidates(configured):
        try:
            result = await _proc.run([binary, "check"], timeout=30, check=False)
        except Exception as exc:  # a missing or broken binary
            tried.append(f"{binary}: {exc}")
            continue
        if result.returncode == 0:
            return Criu(binary)
        detail = _proc.tail(result.stdout + result.stderr, 300).replace("\n", " ")
        tried.append(f"{binary} fails 'criu check': {detail}")
    if not tried:
        return Criu(None, "criu is not installed (scripts/criu.sh installs or builds it)")
    return Criu(None, "; ".join(tried) + " (scripts/criu.sh builds a working criu)")


def write_config(path: Path, options: list[str]) -> dict[str, str]:
    """Write a criu configuration file; returns the environment that names it."""
    path.write_text("".join(f"{line}\n" for line in options))
    return {**_proc.BASE_ENV, "CRIU_CONFIG_FILE": str(path)}


def file_key(pid: int, fd: int) -> str:
    """CRIU's name for the open file ``fd`` of ``pid``: ``file[mnt_id:inode]`` in hex."""
    mnt_id = 0
    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("mnt_id:"):
                mnt_id = int(line.split()[1])
    ino = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    return f"file[{mnt_id:x}:{ino:x}]"
