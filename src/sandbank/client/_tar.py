"""Tar streams on this machine's side: written and read a chunk at a time, so a
directory of any size never sits in memory (both SDK flavours share this).

``tar_directory`` and ``tar_files`` yield an archive as it is produced;
``TarUnpacker`` takes one chunk by chunk into a hidden directory beside the
target and renames it into place once the archive is complete. It refuses what
could land outside the target: absolute names, ``..``, writing through links,
links pointing outside, device nodes and FIFOs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from sandbank import errors
from sandbank.protocol.tarstream import FILE_TYPES, TarParser, TarStreamError, safe_name

BLOCK = 512
READ_SIZE = 1024 * 1024


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _file_data(source: Path | object, size: int, name: str) -> Iterator[bytes]:
    """``size`` bytes of a file (a path or an open binary file) and the padding after them."""
    handle = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
    try:
        left = size
        while left:
            chunk = handle.read(min(READ_SIZE, left))  # type: ignore[attr-defined]
            if not chunk:
                raise errors.SandbankError(f"{name} shrank while it was being sent")
            left -= len(chunk)
            yield chunk
    finally:
        if isinstance(source, Path):
            handle.close()  # type: ignore[attr-defined]
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


def tar_directory(local_dir: str | os.PathLike[str]) -> Iterator[bytes]:
    """The local directory as a tar stream, names relative to it. Symlinks are
    sent as links; sockets, FIFOs and devices are skipped."""
    top = Path(local_dir)
    if not top.is_dir():
        raise errors.NotADirectory(f"{top} is not a local directory")
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            path = Path(root, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            info = tarfile.TarInfo(path.relative_to(top).as_posix())
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
            else:
                continue
            yield _header(info)
            if info.isreg():
                yield from _file_data(path, info.size, str(path))
    yield b"\0" * (2 * BLOCK)


def tar_files(entries: Iterable[tuple[str, object, int, int | None]]) -> Iterator[bytes]:
    """(destination path, bytes or open binary file, size, mode) -> a tar stream.
    A mode travels as a ``sandbank.mode`` pax field; without one the agent keeps
    an existing file's mode (0644 for a new file)."""
    for path, data, size, mode in entries:
        info = tarfile.TarInfo(path)
        info.size = size
        info.mode = 0o644 if mode is None else mode
        if mode is not None:
            info.pax_headers = {"sandbank.mode": f"{mode:o}"}
        yield _header(info)
        if isinstance(data, bytes):
            yield data
            if size % BLOCK:
                yield b"\0" * (BLOCK - size % BLOCK)
        else:
            yield from _file_data(data, size, path)
    yield b"\0" * (2 * BLOCK)


class TarUnpacker(TarParser):
    """Feed a tar stream in with ``feed``; ``finish`` moves it into place."""

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        super().__init__()
        self.target = Path(target)
        if self.target.is_symlink() or (self.target.exists() and not self.target.is_dir()):
            raise errors.FileExists(f"{self.target} exists and is not a local directory")
        if self.target.exists() and not overwrite:
            raise errors.FileExists(f"{self.target} already exists; pass overwrite=True")
        if not self.target.parent.is_dir():
            raise errors.FileNotFound(f"local directory {self.target.parent} does not exist")
        self.staging = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.partial")
        self.staging.mkdir(0o700)
        self.root = os.path.realpath(self.staging)
        self._out = -1
        self._dirs: list[tuple[str, int, float]] = []
        self.bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        try:
            super().feed(data)
        except TarStreamError as exc:
            raise errors.SandbankError(f"the server sent a malformed tar stream: {exc}") from exc

    def finish(self) -> None:
        try:
            super().finish()
        except TarStreamError as exc:
            raise errors.SandbankError(f"the download was cut short: {exc}") from exc
        for path, mode, mtime in reversed(self._dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        if os.path.isdir(self.target):
            old = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.old")
            os.rename(self.target, old)
            os.rename(self.staging, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.staging, self.target)

    def discard(self) -> None:
        """Remove what was unpacked, unless ``finish`` moved it into place."""
        if self._out >= 0:
            os.close(self._out)
            self._out = -1
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- members -------------------------------------------------------------------

    def member(self, info: tarfile.TarInfo) -> None:
        try:
            rel = safe_name(info.name)
        except ValueError as exc:
            raise errors.InvalidPath(f"{exc}; refused") from None
        if rel is None:
            return
        dest = os.path.join(self.root, *rel.split("/"))
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise errors.InvalidPath(f"{info.name!r} would be written outside through a link")
        if os.path.lexists(dest) and not (info.isdir() and os.path.isdir(dest)):
            if os.path.isdir(dest) and not os.path.islink(dest):
                raise errors.InvalidPath(f"{info.name!r} is a directory twice in the archive")
            os.unlink(dest)
        if info.type in FILE_TYPES:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._out = os.open(dest, flags, 0o600)
        elif info.isdir():
            os.makedirs(dest, exist_ok=True)
            self._dirs.append((dest, info.mode & 0o777 | 0o200, info.mtime))
        elif info.issym():
            inside = os.path.normpath(os.path.join(os.path.dirname(dest), info.linkname))
            outside = inside != self.root and not inside.startswith(self.root + os.sep)
            if os.path.isabs(info.linkname) or outside:
                raise errors.InvalidPath(f"symlink {info.name!r} points outside the target")
            os.symlink(info.linkname, dest)
        elif info.islnk():
            try:
                source_rel = safe_name(info.linkname) or ""
            except ValueError:
                source_rel = "../"
            source = os.path.realpath(os.path.join(self.root, source_rel))
            if not source.startswith(self.root + os.sep) or not os.path.isfile(source):
                raise errors.InvalidPath(f"hard link {info.name!r} points outside the target")
            os.link(source, dest)
        else:
            raise errors.InvalidPath(f"{info.name!r} is a device node or FIFO; refused")

    def data(self, view: memoryview) -> None:
        self.bytes += len(view)
        while view:
            view = view[os.write(self._out, view) :]

    def member_done(self, info: tarfile.TarInfo) -> None:
        if self._out < 0:
            return
        fd, self._out = self._out, -1
        try:
            os.fchmod(fd, info.mode & 0o777)
            os.utime(fd, (info.mtime, info.mtime))
        finally:
            os.close(fd)
