"""``tar``: a directory as a tar stream, straight into ``D`` frames.

Headers come from ``tarfile.TarInfo`` (pax format: long names, big files);
file data goes from ``os.read`` to a frame with no copy in between, rather
than through ``tarfile``'s small stream buffer (ten times the CPU per byte).
"""

from __future__ import annotations

import os
import stat
import tarfile

from sandbank.agent.base import Names, entry, resolve
from sandbank.agent.conn import Conn, errors, suppress
from sandbank.protocol.agent import DATA, END, FILE_CHUNK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BLOCK = 512


class _Out:
    """Headers and padding gathered into frames of up to ``FILE_CHUNK``."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.buf = bytearray()

    def small(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= FILE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.conn.send(DATA, bytes(self.buf))
            self.buf.clear()


def tar_dir(conn: Conn, req: dict[str, Any]) -> None:
    """``tar`` {path, user} -> ok+entry, D*, Z: names relative to ``path``.

    Symlinks are sent as links, files linked more than once as hard links to
    their first name; sockets, FIFOs and devices are left out. A file that
    shrinks while it is read cuts the stream (no ``Z``): the client sees a
    failed download, never a short file.
    """
    top = resolve(req.get("path"), req.get("user"))
    st = os.stat(top)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.NotADirectory(f"{top} is not a directory; read a single file instead")
    conn.ok(entry=entry(top, st))
    out = _Out(conn)
    names = Names()
    seen: dict[tuple[int, int], str] = {}
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            path = os.path.join(root, name)
            with suppress(FileNotFoundError):  # gone since the walk listed it
                _member(out, path, os.path.relpath(path, top), names, seen)
    out.small(b"\0" * (2 * BLOCK))
    out.flush()
    conn.send(END)


def _member(
    out: _Out, path: str, arcname: str, names: Names, seen: dict[tuple[int, int], str]
) -> None:
    st = os.lstat(path)
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = names.user(st.st_uid), names.group(st.st_gid)
    info.mtime = int(st.st_mtime)
    fd = -1
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            info.type = tarfile.LNKTYPE
            info.linkname = seen[key]
        else:
            seen[key] = arcname
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            info.size = st.st_size
    else:
        return
    try:
        out.small(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if fd >= 0:
            _data(out, fd, info.size, arcname)
    finally:
        if fd >= 0:
            os.close(fd)


def _data(out: _Out, fd: int, size: int, name: str) -> None:
    out.flush()
    left = size
    while left:
        chunk = os.read(fd, min(FILE_CHUNK, left))
        if not chunk:
            raise errors.Conflict(f"{name} shrank while it was being sent")
        out.conn.send(DATA, chunk)
        left -= len(chunk)
    if size % BLOCK:
        out.small(b"\0" * (BLOCK - size % BLOCK))
