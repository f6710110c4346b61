"""Directory trees from tar streams, never held whole in memory (``tar``, the
other way, is in ``tarout``).

``untar`` unpacks a stream (plain, gzip, bzip2 or xz) with the push parser of
``protocol.tarstream``, file data going from the received frame straight to
the file, into a fresh hidden directory beside the target, and renames it into
place only after the ``Z`` frame: a cut upload leaves nothing at the target.

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
from sandbank.protocol.agent import DATA, END, FrameError
from sandbank.protocol.tarstream import FILE_TYPES, TarParser, TarStreamError, safe_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Upload:
    """The ``D`` frames of a request, fed to a tar parser up to the ``Z``.

    A stream cut before its ``Z`` raises ``ConnectionError``: never a short archive.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.ended = False

    def into(self, parser: TarParser) -> None:
        while not self.ended:
            try:
                kind, view = self.conn.recv_view()
            except FrameError as exc:
                raise ConnectionError(f"the upload was cut: {exc}") from None
            if kind == END:
                self.ended = True
            elif kind != DATA:
                raise errors.BadRequest(f"expected a data frame, got {kind!r}")
            elif not parser.ended:  # what follows the end blocks is padding
                parser.feed(view)
        parser.finish()


# -- upload ------------------------------------------------------------------------


def untar(conn: Conn, req: dict[str, Any]) -> None:
    """``untar`` {path, user, overwrite} + D*, Z -> ok+entry.

    Like ``write``, a refusal may come before the ``Z``; the rest is discarded.
    """
    created: list[str] = []
    staging: str | None = None
    upload = Upload(conn)
    extractor: Extractor | None = None
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
        extractor = Extractor(staging, who)
        upload.into(extractor)
        extractor.close()
        _swap_in(staging, target, replace)
        staging = None
        created = []
        conn.ok(entry=entry(target))
    except (FrameError, ConnectionError):
        raise
    except (errors.SandbankError, TarStreamError, OSError) as exc:
        failure = upload_error(exc)
    finally:
        # Cleaned up before any answer: a client told of a failure finds nothing left.
        if extractor is not None:
            extractor.release()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_dirs(created)
    if failure is not None:
        _refuse(conn, failure, upload.ended)


def upload_error(exc: Exception) -> errors.SandbankError:
    if isinstance(exc, errors.SandbankError):
        return exc
    if isinstance(exc, TarStreamError):
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


class Extractor(TarParser):
    """Unpacks a tar stream into ``root`` (a directory of its own), refusing escapes."""

    def __init__(self, root: str, who: Identity) -> None:
        super().__init__()
        self.root = os.path.realpath(root)
        self.who = who
        self._dirs: list[tuple[str, int, float]] = []
        self._fd = -1

    def close(self) -> None:
        """After the last member: directory modes and times, set last because a
        read-only directory must not block what goes into it, and writing into
        one changes its mtime."""
        for path, mode, mtime in reversed(self._dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    def member(self, info: tarfile.TarInfo) -> None:
        rel = member_path(info.name)
        if rel is None:  # the archive's root itself: only its mode and time count
            if info.isdir():
                self._dirs.append((self.root, info.mode & 0o777 | 0o200, info.mtime))
            return
        dest = os.path.join(self.root, rel)
        self._parent(dest, info.name)
        if info.isdir():
            if not os.path.isdir(dest) or os.path.islink(dest):
                self._clear(dest)
                os.mkdir(dest, 0o700)
                chown(dest, self.who)
            self._dirs.append((dest, info.mode & 0o777 | 0o200, info.mtime))
            return
        self._clear(dest)
        if info.type in FILE_TYPES:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(dest, flags, 0o600)
        elif info.issym():
            self._symlink(info, rel, dest)
        elif info.islnk():
            self._hardlink(info, dest)
        else:
            raise errors.InvalidPath(
                f"{info.name!r} is a device node or FIFO; archives may hold only files, "
                "directories and links"
            )

    def data(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view) :]

    def release(self) -> None:
        """Close a file left open by a failure mid-member."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def member_done(self, info: tarfile.TarInfo) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if os.geteuid() == 0:
                os.fchown(fd, self.who.uid, self.who.gid)
            os.fchmod(fd, info.mode & 0o777)
            os.utime(fd, (info.mtime, info.mtime))
        finally:
            os.close(fd)

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

    def _symlink(self, info: tarfile.TarInfo, rel: str, dest: str) -> None:
        target = info.linkname
        inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            raise errors.InvalidPath(
                f"symlink {info.name!r} -> {target!r} points outside the target"
            )
        os.symlink(target, dest)
        chown(dest, self.who)

    def _hardlink(self, info: tarfile.TarInfo, dest: str) -> None:
        rel = member_path(info.linkname)
        source = os.path.join(self.root, rel) if rel else self.root
        real = os.path.realpath(source)
        if rel is None or not real.startswith(self.root + "/") or not os.path.isfile(source):
            raise errors.InvalidPath(
                f"hard link {info.name!r} -> {info.linkname!r} does not name a file "
                "unpacked earlier in the archive"
            )
        os.link(real, dest, follow_symlinks=False)


def member_path(name: str) -> str | None:
    """An archive name as a safe relative path; None for the root itself."""
    try:
        return safe_name(name)
    except ValueError as exc:
        raise errors.InvalidPath(str(exc)) from None
