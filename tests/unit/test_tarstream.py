"""The shared tar push parser: any chunking, long names, compression, bad input."""

from __future__ import annotations

import io
import tarfile

import pytest

from sandbank.protocol.tarstream import TarParser, TarStreamError, safe_name


class Collect(TarParser):
    def __init__(self) -> None:
        super().__init__()
        self.got: dict[str, bytes | str] = {}
        self._name = ""
        self._buf = bytearray()

    def member(self, info: tarfile.TarInfo) -> None:
        self._name = info.name
        self._buf.clear()
        if info.issym() or info.islnk():
            self.got[info.name] = f"-> {info.linkname}"

    def data(self, view: memoryview) -> None:
        self._buf += view

    def member_done(self, info: tarfile.TarInfo) -> None:
        if info.isreg():
            self.got[info.name] = bytes(self._buf)


def archive(mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("a.txt", b"alpha"),
            ("d/" + "long" * 60 + ".bin", bytes(range(256)) * 9),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.SYMTYPE, "x/" + "y" * 150
        tar.addfile(link)
        empty = tarfile.TarInfo("empty")
        tar.addfile(empty, io.BytesIO(b""))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("piece", "mode"),
    [(1, "w"), (7, "w"), (512, "w"), (100_000, "w")]
    + [(piece, mode) for piece in (7, 4096) for mode in ("w:gz", "w:bz2", "w:xz")],
)
def test_any_chunking_and_compression(piece: int, mode: str) -> None:
    data = archive(mode)
    parser = Collect()
    for start in range(0, len(data), piece):
        parser.feed(data[start : start + piece])
    parser.finish()
    long = "d/" + "long" * 60 + ".bin"
    assert parser.got == {
        "a.txt": b"alpha",
        long: bytes(range(256)) * 9,
        "l": "-> x/" + "y" * 150,
        "empty": b"",
    }


def test_bad_input() -> None:
    parser = Collect()
    with pytest.raises(TarStreamError, match="not a valid tar"):
        parser.feed(b"this is not a tar archive at all" * 20)
    cut = Collect()
    cut.feed(archive()[:1500])
    with pytest.raises(TarStreamError, match="ends before"):
        cut.finish()
    broken = Collect()
    with pytest.raises(TarStreamError, match="compressed"):
        broken.feed(b"\x1f\x8b\x08\x00" + b"garbage" * 10)


def test_safe_name() -> None:
    assert safe_name("./a//b/") == "a/b"
    assert safe_name(".") is None
    for bad in ("/etc/passwd", "a/../../b", ".."):
        with pytest.raises(ValueError):
            safe_name(bad)
