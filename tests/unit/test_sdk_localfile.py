"""The SDK's batched writes of a download to a local file."""

from __future__ import annotations

import os
from pathlib import Path

from sandbank.client._localfile import BATCH, BatchedWriter


def test_every_byte_lands_in_order(tmp_path: Path) -> None:
    data = os.urandom(3 * BATCH + 12345)
    sizes = [1, 65536, BATCH, 7, BATCH + 1, 100_000]
    target = tmp_path / "out.bin"
    with target.open("xb", buffering=0) as out:
        writer = BatchedWriter(out)
        offset = 0
        for size in sizes * 10:
            if offset >= len(data):
                break
            writer.write(data[offset : offset + size])
            offset += size
        writer.flush()
        writer.flush()  # nothing left: a no-op
    assert target.read_bytes() == data


def test_nothing_written_is_an_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "empty.bin"
    with target.open("xb", buffering=0) as out:
        BatchedWriter(out).flush()
    assert target.read_bytes() == b""
