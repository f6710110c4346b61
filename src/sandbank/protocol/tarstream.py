"""A push parser for tar streams, shared by the agent (uploads into a sandbox)
and the SDK (downloads out of one). Stdlib only: the agent imports it.

Bytes go in with ``feed`` in whatever pieces they arrive; a subclass gets
``member(info)`` for each entry (pax and GNU long names already applied),
``data(view)`` for the pieces of a regular file's content, and
``member_done(info)``. File data is handed on as views of what was fed, never
copied or gathered: ``tarfile``'s stream mode reads 10 KiB at a time and copies
each byte four times, which made unpacking ten times slower than writing.

gzip, bzip2 and xz streams are recognised by their first bytes and
decompressed on the way.
"""

from __future__ import annotations

import tarfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BLOCK = 512
#: Largest pax or GNU long-name header accepted: they hold names, not data.
MAX_META = 1024 * 1024
META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_ZERO = b"\0" * BLOCK


class TarStreamError(ValueError):
    """The bytes are not a tar stream (or a compressed one)."""


def safe_name(name: str) -> str | None:
    """A member name as a relative path that stays inside the target (None
    for the target itself); ValueError for absolute names and ``..``."""
    if name.startswith("/") or "\0" in name:
        raise ValueError(f"archive member {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"archive member {name!r} climbs out with '..'")
    return "/".join(parts) or None


def _decompressor(head: bytes) -> Any:
    if head.startswith(b"\x1f\x8b"):
        import zlib

        return zlib.decompressobj(31)
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2Decompressor()
    if head.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.LZMADecompressor()
    return None


class TarParser:
    def __init__(self) -> None:
        self.ended = False
        self._sniffed = False
        self._sniff = b""
        self._inflate: Any = None
        self._header = bytearray()
        self._remaining = 0
        self._pad = 0
        self._meta: bytearray | None = None
        self._meta_type = b""
        self._pax: dict[str, str] = {}
        self._long: dict[bytes, str] = {}
        self._current: tarfile.TarInfo | None = None

    # -- what a subclass does with the entries -------------------------------------

    def member(self, info: tarfile.TarInfo) -> None:
        """An entry begins (its data, for a regular file, follows)."""

    def data(self, view: memoryview) -> None:
        """A piece of the current regular file's content; valid during the call."""

    def member_done(self, info: tarfile.TarInfo) -> None:
        """The current entry is complete."""

    # -- feeding -------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not self._sniffed:
            self._sniff += bytes(data)
            if len(self._sniff) < 6 and data:
                return
            self._sniffed = True
            self._inflate = _decompressor(self._sniff)
            data, self._sniff = self._sniff, b""
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except Exception as exc:  # zlib.error, lzma's LZMAError, OSError, EOFError
                raise TarStreamError(f"the compressed stream is corrupt: {exc}") from None
        self._parse(memoryview(data))

    def finish(self) -> None:
        """The input is complete; TarStreamError if the archive is not."""
        if not self._sniffed and self._sniff:
            self._sniffed = True
            self._parse(memoryview(self._sniff))
        if not self.ended:
            raise TarStreamError("the archive ends before its end-of-archive block")

    def _parse(self, view: memoryview) -> None:
        while view and not self.ended:
            if self._remaining:
                take = view[: self._remaining]
                self._remaining -= len(take)
                view = view[len(take) :]
                if self._meta is not None:
                    self._meta += take
                else:
                    self.data(take)
                if not self._remaining:
                    self._done()
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

    def _on_header(self, block: bytes) -> None:
        if block == _ZERO:
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarStreamError(f"not a valid tar stream: {exc}") from None
        if info.type in META_TYPES:
            if info.size > MAX_META:
                raise TarStreamError(f"a tar header of {info.size} bytes is too large")
            self._meta, self._meta_type = bytearray(), info.type
            self._start(info.size)
            return
        long_name = self._long.pop(tarfile.GNUTYPE_LONGNAME, info.name)
        info.name = self._pax.pop("path", "") or long_name
        long_link = self._long.pop(tarfile.GNUTYPE_LONGLINK, "")
        info.linkname = self._pax.pop("linkpath", "") or long_link or info.linkname
        if "size" in self._pax:
            info.size = int(self._pax["size"])
        info.pax_headers = dict(self._pax)
        self._pax.clear()
        self._long.clear()
        self._current = info
        self.member(info)
        self._start(info.size if info.type in FILE_TYPES else 0)

    def _start(self, size: int) -> None:
        self._remaining = size
        self._pad = -size % BLOCK
        if not size:
            self._done()

    def _done(self) -> None:
        if self._meta is not None:
            meta, self._meta = bytes(self._meta), None
            if self._meta_type == tarfile.XHDTYPE:
                self._pax.update(_pax_records(meta))
            elif self._meta_type != tarfile.XGLTYPE:
                name = meta.split(b"\0", 1)[0]
                self._long[self._meta_type] = name.decode("utf-8", "surrogateescape")
            return
        info, self._current = self._current, None
        if info is not None:
            self.member_done(info)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"LEN key=value\\n"`` records."""
    records: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= 0:
                break
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            records[key.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
            pos += length
    except ValueError as exc:
        raise TarStreamError(f"a malformed pax header: {exc}") from None
    return records
