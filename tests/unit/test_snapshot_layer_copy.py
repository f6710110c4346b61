"""The snapshot-to-template copy's own parts, without a server."""

from __future__ import annotations

import os
from pathlib import Path

from sandbank.runtime.linux.snapshot_template import prefetch


def test_prefetch_asks_only_for_data_extents(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(1 << 30)  # a sparse 1 GiB image ...
        fh.seek(4096)
        fh.write(b"a" * 8192)  # ... holding two small extents
        fh.seek(512 << 20)
        fh.write(b"b" * 4096)
        fh.flush()
        os.fsync(fh.fileno())
    asked = prefetch(image)
    assert 12288 <= asked <= 1 << 20, asked
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert prefetch(empty) == 0
