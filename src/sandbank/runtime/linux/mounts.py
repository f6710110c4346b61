"""Reading the host's mount table, and unmounting."""

from __future__ import annotations

import asyncio
import errno
import time
from dataclasses import dataclass
from pathlib import Path

from sandbank.errors import RuntimeFailure
from sandbank.runtime.linux import kernel


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


def escape(path: str) -> str:
    """The inverse of ``unescape``: a path as /proc/mounts writes it."""
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        path = path.replace(char, code)
    return path


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


def table(containing: str | None = None) -> list[Mount]:
    """The mount table; ``containing``: only lines with a field starting with
    that path are parsed (a superset of the mounts at or below it).

    Every sandbox adds two mounts to the host's table. Parsing all of it took
    ~10 ms at 500 sandboxes, on the event loop, several times per teardown;
    the text itself is cheap to scan.
    """
    text = Path("/proc/self/mounts").read_text()
    if containing is not None:
        needle = " " + escape(containing)
        text = "\n".join(line for line in text.splitlines() if needle in line)
    return parse(text)


def under(prefix: Path, mounts: list[Mount] | None = None) -> list[Mount]:
    """Mounts at or below ``prefix``, deepest first (the order to unmount them in)."""
    top = str(prefix).rstrip("/")
    mounts = table(containing=top) if mounts is None else mounts
    hits = [m for m in mounts if str(m.point) == top or str(m.point).startswith(top + "/")]
    return sorted(hits, key=lambda m: len(m.point.parts), reverse=True)


def is_mounted(point: Path) -> bool:
    return any(m.point == point for m in table(containing=str(point)))


def check_option_safe(path: Path) -> None:
    """Paths go into comma/colon separated mount options; refuse what would split them."""
    if any(c in str(path) for c in ",:\n\\"):
        raise RuntimeFailure(f"path {path} contains a character mount options cannot carry")


async def unmount(point: Path, timeout: float = 5.0) -> None:
    """Unmount every mount stacked at ``point``, retrying while busy; lazily
    detach as the last resort.

    A mount stays busy for a moment after the processes using it died (their
    files are closed asynchronously), hence the retries.
    """
    deadline = time.monotonic() + timeout
    while is_mounted(point):
        try:
            kernel.umount(point)
            continue
        except OSError as exc:
            # EINVAL: not a mount point (any more); ENOENT: gone altogether.
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                break
        await asyncio.sleep(0.02)
    if not is_mounted(point):
        return
    try:
        kernel.umount(point, kernel.MNT_DETACH)
    except OSError as exc:
        if is_mounted(point):
            raise RuntimeFailure(f"unmounting {point} failed: {exc.strerror or exc}") from exc
