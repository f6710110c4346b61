"""Reading the host's mount table and mounting/unmounting through ``_proc``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from sandbank.errors import RuntimeFailure
from sandbank.runtime import _proc


@dataclass(frozen=True)
class Mount:
    source: str
    point: Path
    fstype: str
    options: tuple[str, ...]


def unescape(field: str) -> str:
    """/proc/mounts escapes spaces and friends as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse(text: str) -> list[Mount]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            found.append(
                Mount(
                    unescape(fields[0]),
                    Path(unescape(fields[1])),
                    fields[2],
                    tuple(unescape(fields[3]).split(",")),
                )
            )
    return found


def table() -> list[Mount]:
    return parse(Path("/proc/self/mounts").read_text())


def under(prefix: Path, mounts: list[Mount] | None = None) -> list[Mount]:
    """Mounts at or below ``prefix``, deepest first (the order to unmount them in)."""
    mounts = table() if mounts is None else mounts
    top = str(prefix).rstrip("/")
    hits = [m for m in mounts if str(m.point) == top or str(m.point).startswith(top + "/")]
    return sorted(hits, key=lambda m: len(m.point.parts), reverse=True)


def is_mounted(point: Path) -> bool:
    return any(m.point == point for m in table())


def check_option_safe(path: Path) -> None:
    """Paths go into comma/colon separated mount options; refuse what would split them."""
    if any(c in str(path) for c in ",:\n\\"):
        raise RuntimeFailure(f"path {path} contains a character mount options cannot carry")


async def mount(argv_tail: list[str], timeout: float = 30) -> None:
    await _proc.run(["mount", *argv_tail], timeout=timeout)


async def unmount(point: Path, timeout: float = 5.0) -> None:
    """Unmount, retrying while busy; lazily detach as the last resort.

    A mount stays busy for a moment after the processes using it died (their
    files are closed asynchronously), hence the retries.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not is_mounted(point):
            return
        result = await _proc.run(["umount", str(point)], check=False, timeout=30)
        if result.returncode == 0 or not is_mounted(point):
            return
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    result = await _proc.run(["umount", "--lazy", str(point)], check=False, timeout=30)
    if result.returncode != 0 and is_mounted(point):
        raise _proc.failure(result, f"unmounting {point}")
