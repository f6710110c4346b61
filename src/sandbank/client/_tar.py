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

BLOCK = 512
READ_SIZE = 1024 * 1024
#: Largest pax or GNU long-name header accepted (they hold names, not data).
MAX_META = 1024 * 1024
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


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


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarUnpacker:
    """Feed a tar stream in with ``feed``; ``finish`` moves it into place."""

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
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
        self._header = bytearray()
        self._remaining = 0
        self._pad = 0
        self._out: int | None = None
        self._meta: bytearray | None = None
        self._meta_type = b""
        self._pax: dict[str, str] = {}
        self._long: dict[bytes, str] = {}
        self._current: tarfile.TarInfo | None = None
        self._dirs: list[tuple[str, int, float]] = []
        self.ended = False
        self.bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.ended:
            if self._remaining:
                take = view[: self._remaining]
                self._data(take)
                self._remaining -= len(take)
                view = view[len(take) :]
                if not self._remaining:
                    self._member_done()
            elif self._pad:
                skip = min(self._pad, len(view))
                self._pad -= skip
                view = view[skip:]
            else:
                need = BLOCK - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) == BLOCK:
                    block, self._header = bytes(self._header), bytearray()
                    self._on_header(block)

    def finish(self) -> None:
        if not self.ended:
            raise errors.SandbankError("the archive ended before its end-of-archive blocks")
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
        if self._out is not None:
            os.close(self._out)
            self._out = None
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- members -------------------------------------------------------------------

    def _on_header(self, block: bytes) -> None:
        if block == b"\0" * BLOCK:
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise errors.SandbankError(f"the server sent a malformed tar stream: {exc}") from exc
        if info.type in _META_TYPES:
            if info.size > MAX_META:
                raise errors.SandbankError("the server sent an oversized tar header")
            self._meta, self._meta_type = bytearray(), info.type
            self._start_data(info.size)
            return
        long_name = self._long.pop(tarfile.GNUTYPE_LONGNAME, info.name)
        info.name = self._pax.pop("path", "") or long_name
        long_link = self._long.pop(tarfile.GNUTYPE_LONGLINK, "")
        link = self._pax.pop("linkpath", "") or long_link
        info.linkname = link or info.linkname
        if "size" in self._pax:
            info.size = int(self._pax["size"])
        self._pax.clear()
        self._long.clear()
        self._current = info
        self._create(info)
        self._start_data(info.size if info.type in _FILE_TYPES else 0)

    def _start_data(self, size: int) -> None:
        self._remaining = size
        self._pad = -size % BLOCK
        if not size:
            self._member_done()

    def _data(self, chunk: memoryview) -> None:
        if self._meta is not None:
            self._meta += chunk
        elif self._out is not None:
            self.bytes += len(chunk)
            while chunk:
                chunk = chunk[os.write(self._out, chunk) :]

    def _member_done(self) -> None:
        if self._meta is not None:
            meta, self._meta = bytes(self._meta), None
            if self._meta_type == tarfile.XHDTYPE:
                self._pax.update(_pax_records(meta))
            elif self._meta_type != tarfile.XGLTYPE:
                self._long[self._meta_type] = meta.rstrip(b"\0").decode("utf-8", "surrogateescape")
            return
        info, self._current = self._current, None
        if self._out is not None and info is not None:
            os.close(self._out)
            self._out = None
            path = self._path(info.name)
            os.chmod(path, info.mode & 0o777)
            os.utime(path, (info.mtime, info.mtime))

    def _path(self, name: str) -> str:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise errors.InvalidPath(f"archive member {name!r} would land outside the target")
        return os.path.join(self.root, *parts)

    def _create(self, info: tarfile.TarInfo) -> None:
        dest = self._path(info.name)
        if dest == self.root:
            return
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise errors.InvalidPath(f"{info.name!r} would be written outside through a link")
        if os.path.lexists(dest) and not (info.isdir() and os.path.isdir(dest)):
            if os.path.isdir(dest) and not os.path.islink(dest):
                raise errors.InvalidPath(f"{info.name!r} is a directory twice in the archive")
            os.unlink(dest)
        if info.type in _FILE_TYPES:
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
            source = os.path.realpath(self._path(info.linkname))
            if not source.startswith(self.root + os.sep) or not os.path.isfile(source):
                raise errors.InvalidPath(f"hard link {info.name!r} points outside the target")
            os.link(source, dest)
        else:
            raise errors.InvalidPath(f"{info.name!r} is a device node or FIFO; refused")
