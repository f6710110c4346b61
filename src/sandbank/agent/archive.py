"""Directory trees from tar streams, never held whole in memory (``tar``, the
other way, is in ``tarout``).

``untar`` unpacks a stream (``r|*``: plain or compressed)
into a fresh hidden directory beside the target and renames it into place
only after the ``Z`` frame, so a cut upload leaves nothing at the target path.

Extraction refuses anything that could land outside the target: absolute
names, ``..`` components, writing through a symlink that leads out, symlinks
or hard links pointing outside, and device nodes and FIFOs. Set-id bits are
dropped; everything created belongs to the requesting user.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile

from sandbank.agent.base import (
    Identity,
    chown,
    entry,
    identity,
    make_dirs,
    os_error,
    remove_dirs,
    resolve,
)
from sandbank.agent.conn import Conn, errors
from sandbank.agent.files import _refuse, _temp_name
from sandbank.protocol.agent import DATA, END, FILE_CHUNK, FrameError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COPY_SIZE = 1024 * 1024


class FrameReader:
    """The ``D`` frames of a request as a file object for ``tarfile``; ``Z`` is EOF.

    A stream cut before its ``Z`` raises ``ConnectionError``: never a short archive.
    """

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._buf = memoryview(b"")
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        if not self._buf and not self.ended:
            self._next()
        if size < 0 or size >= len(self._buf):
            data, self._buf = bytes(self._buf), memoryview(b"")
            return data
        data, self._buf = bytes(self._buf[:size]), self._buf[size:]
        return data

    def _next(self) -> None:
        while not self.ended and not self._buf:
            try:
                kind, payload = self._conn.recv_frame()
            except FrameError as exc:
                raise ConnectionError(f"the upload was cut: {exc}") from None
            if kind == END:
                self.ended = True
            elif kind == DATA:
                self._buf = memoryview(payload)
            else:
                raise errors.BadRequest(f"expected a data frame, got {kind!r}")

    def drain(self) -> None:
        """Read up to ``Z`` (a tar's end blocks may come before the stream's end)."""
        while not self.ended:
            self._buf = memoryview(b"")
            self._next()


# -- upload ------------------------------------------------------------------------


def untar(conn: Conn, req: dict[str, Any]) -> None:
    """``untar`` {path, user, overwrite} + D*, Z -> ok+entry.

    Like ``write``, a refusal may come before the ``Z``; the rest is discarded.
    """
    created: list[str] = []
    staging: str | None = None
    reader = FrameReader(conn)
    failure: errors.SandbankError | None = None
    try:
        who = identity(req.get("user"))
        target = resolve(req.get("path"), who)
        if target == "/":
            raise errors.InvalidPath("cannot unpack onto /")
        replace = _check_target(target, bool(req.get("overwrite", False)))
        created = make_dirs(os.path.dirname(target), who)
        staging = _temp_name(target)
        os.mkdir(staging, 0o700)
        chown(staging, who)
        os.chmod(staging, 0o755)  # unless the archive's "." entry says otherwise
        Extractor(staging, who).run(reader)
        reader.drain()
        _swap_in(staging, target, replace)
        staging = None
        created = []
        conn.ok(entry=entry(target))
    except (FrameError, ConnectionError):
        raise
    except (errors.SandbankError, tarfile.TarError, OSError) as exc:
        failure = upload_error(exc)
    finally:
        # Cleaned up before any answer: a client told of a failure finds nothing left.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_dirs(created)
    if failure is not None:
        _refuse(conn, failure, reader.ended)


def upload_error(exc: Exception) -> errors.SandbankError:
    if isinstance(exc, errors.SandbankError):
        return exc
    if isinstance(exc, tarfile.TarError):
        return errors.BadRequest(f"the upload is not a valid tar stream: {exc}")
    assert isinstance(exc, OSError)
    return os_error(exc)


def _check_target(target: str, overwrite: bool) -> bool:
    """Whether a directory already at ``target`` is to be replaced."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise errors.FileExists(f"{target} exists and is not a directory")
    if not overwrite:
        raise errors.FileExists(f"{target} already exists; pass overwrite=true to replace it")
    return True


def _swap_in(staging: str, target: str, replace: bool) -> None:
    """Rename the unpacked tree into place. Replacing takes two renames: the old
    tree moves aside first, and comes back if the second rename fails."""
    if not replace:
        os.rename(staging, target)
        return
    old = _temp_name(target)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class Extractor:
    """Unpacks a tar stream into ``root`` (a directory of its own), refusing escapes."""

    def __init__(self, root: str, who: Identity) -> None:
        self.root = os.path.realpath(root)
        self.who = who
        self._dirs: list[tuple[str, int, float]] = []

    def run(self, source: FrameReader) -> None:
        # Read in FILE_CHUNK pieces: tarfile's default of 10 KiB costs ten times the CPU.
        with tarfile.open(fileobj=source, mode="r|*", bufsize=FILE_CHUNK) as tar:  # type: ignore[call-overload]
            for member in tar:
                self._extract(tar, member)
        # Directory modes and times last: a read-only directory must not block
        # what goes into it, and writing into one changes its mtime.
        for path, mode, mtime in reversed(self._dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = member_path(member.name)
        if rel is None:  # the archive's root itself: only its mode and time count
            if member.isdir():
                self._dirs.append((self.root, member.mode & 0o777 | 0o200, member.mtime))
            return
        dest = os.path.join(self.root, rel)
        self._parent(dest, member.name)
        mode = member.mode & 0o777
        if member.isdir():
            if not os.path.isdir(dest) or os.path.islink(dest):
                self._clear(dest)
                os.mkdir(dest, 0o700)
                chown(dest, self.who)
            self._dirs.append((dest, mode | 0o200, member.mtime))
            return
        self._clear(dest)
        if member.isreg():
            self._file(tar, member, dest, mode)
        elif member.issym():
            self._symlink(member, rel, dest)
        elif member.islnk():
            self._hardlink(member, dest)
        else:
            raise errors.InvalidPath(
                f"{member.name!r} is a device node or FIFO; archives may hold only files, "
                "directories and links"
            )

    def _parent(self, dest: str, name: str) -> None:
        parent = os.path.dirname(dest)
        if not os.path.lexists(parent):
            make_dirs(parent, self.who)
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + "/"):
            raise errors.InvalidPath(f"{name!r} would be written outside the target through a link")

    def _clear(self, dest: str) -> None:
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise errors.InvalidPath(f"{os.path.relpath(dest, self.root)!r} is a directory twice")
        os.unlink(dest)  # a later member of the same name wins, as with tar itself

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, mode: int) -> None:
        source = tar.extractfile(member)
        fd = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            while source is not None and (chunk := source.read(COPY_SIZE)):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if os.geteuid() == 0:
                os.fchown(fd, self.who.uid, self.who.gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.utime(dest, (member.mtime, member.mtime), follow_symlinks=False)

    def _symlink(self, member: tarfile.TarInfo, rel: str, dest: str) -> None:
        target = member.linkname
        inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            raise errors.InvalidPath(
                f"symlink {member.name!r} -> {target!r} points outside the target"
            )
        os.symlink(target, dest)
        chown(dest, self.who)

    def _hardlink(self, member: tarfile.TarInfo, dest: str) -> None:
        rel = member_path(member.linkname)
        source = os.path.join(self.root, rel) if rel else self.root
        real = os.path.realpath(source)
        if rel is None or not real.startswith(self.root + "/") or not os.path.isfile(source):
            raise errors.InvalidPath(
                f"hard link {member.name!r} -> {member.linkname!r} does not name a file "
                "unpacked earlier in the archive"
            )
        os.link(real, dest, follow_symlinks=False)


def member_path(name: str) -> str | None:
    """An archive name as a safe relative path; None for the root itself."""
    if name.startswith("/") or "\0" in name:
        raise errors.InvalidPath(f"archive member {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidPath(f"archive member {name!r} climbs out with '..'")
    return "/".join(parts) or None
