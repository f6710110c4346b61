"""``hostname``: the sandbox's name in its own files.

/etc/hostname is replaced; in /etc/hosts only the ``127.0.1.1`` line (the one
that makes the name resolve) is, every other line a command may have added
stays. Both are written whole to a temp file and renamed over the old one, so
a reader never sees half a file. The kernel's hostname is not the agent's to
set: a container's agent lacks CAP_SYS_ADMIN, the runtime sets it from outside.
"""

from __future__ import annotations

import os
import stat

from sandbank.agent.conn import Conn, errors, suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Testing aid, never set inside a sandbox: the directory holding hostname and hosts.
ETC_ENV = "SANDBANK_AGENT_ETC"
HOSTS_ADDRESS = "127.0.1.1"
#: /etc/hosts belongs to the sandbox; a file this large is not one to rewrite.
MAX_HOSTS_BYTES = 1024 * 1024
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def hostname(conn: Conn, req: dict[str, Any]) -> None:
    name = req.get("name")
    if not isinstance(name, str) or not is_hostname(name):
        raise errors.BadRequest(f"invalid hostname {name!r}")
    etc = os.environ.get(ETC_ENV, "/etc")
    _replace(os.path.join(etc, "hostname"), f"{name}\n")
    hosts = os.path.join(etc, "hosts")
    _replace(hosts, hosts_with(_read(hosts), name))
    conn.ok()


def is_hostname(name: str) -> bool:
    """RFC 1123 labels joined by dots, at most 64 bytes (the kernel's limit)."""
    if not 0 < len(name) <= 64:
        return False
    return all(
        0 < len(label) <= 63 and set(label) <= _LABEL_CHARS and label[0] != "-" != label[-1]
        for label in name.split(".")
    )


def hosts_with(text: str, name: str) -> str:
    """``text`` (an /etc/hosts) with ``name`` as the one name of ``127.0.1.1``."""
    mine = f"{HOSTS_ADDRESS}\t{name}\n"
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out: list[str] = []
    placed = False
    for line in lines:
        if line.split("#", 1)[0].split()[:1] == [HOSTS_ADDRESS]:
            if not placed:
                out.append(mine)
                placed = True
            continue
        out.append(line)
    if not placed:
        # Right after localhost, where Debian's own tools put it.
        at = next((i + 1 for i, line in enumerate(out) if line.startswith("127.0.0.1")), 0)
        out.insert(at, mine)
    return "".join(out)


def _read(path: str) -> str:
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the agent.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_HOSTS_BYTES:
            raise errors.Conflict(f"{path} is not a regular file of a sensible size")
        return os.read(fd, MAX_HOSTS_BYTES).decode(errors="replace")
    finally:
        os.close(fd)


def _replace(path: str, text: str) -> None:
    """Write ``path`` whole under a temp name and rename it into place, keeping
    the old file's owner and mode (through a symlink, as a shell redirect would)."""
    path = os.path.realpath(path)
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    tmp = f"{path}.{os.urandom(6).hex()}.sandbank-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view) :]
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
                if os.geteuid() == 0:
                    os.fchown(fd, old.st_uid, old.st_gid)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
