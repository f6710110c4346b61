"""The snapshot copy on real files: holes stay holes, the data is the same, a
copy onto another file system works, and a full one leaves nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbank.runtime.linux.snapshots import allocated, copy_image
from tests.conftest import is_root

MIB = 2**20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 256 MiB sparse file with 3 MiB of data in two places."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as fh:
        fh.truncate(256 * MIB)
        fh.seek(10 * MIB)
        fh.write(os.urandom(2 * MIB))
        fh.seek(200 * MIB)
        fh.write(os.urandom(MIB))
    return path


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_sparse_copy_keeps_holes_and_data(image: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.img"
    method = copy_image(image, copy)
    assert method in ("reflink", "sparse")
    assert copy.stat().st_size == image.stat().st_size
    assert copy.read_bytes() == image.read_bytes()
    if method == "sparse":
        assert 3 * MIB <= allocated(copy) < 8 * MIB


def test_copy_refuses_to_overwrite(image: Path, tmp_path: Path) -> None:
    existing = tmp_path / "there.img"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        copy_image(image, existing)
    assert existing.read_bytes() == b"keep"


def test_full_target_leaves_nothing(image: Path, small_fs: Path) -> None:
    target = small_fs / "copy.img"
    with pytest.raises(OSError) as err:
        copy_image(image, target)
    assert err.value.errno == errno.ENOSPC
    assert not target.exists()
    assert os.listdir(small_fs) == []


def test_copy_onto_another_file_system(tmp_path: Path, small_fs: Path) -> None:
    source = tmp_path / "tiny.img"
    with open(source, "wb") as fh:
        fh.truncate(64 * MIB)
        fh.seek(MIB)
        fh.write(b"x" * 4096)
    target = small_fs / "copy.img"
    copy_image(source, target, durable=False)
    assert target.read_bytes() == source.read_bytes()
