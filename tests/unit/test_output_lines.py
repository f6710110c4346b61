"""Output events written straight from their bytes are the same JSON text the
general encoder gives, and bytes it cannot take go back to that encoder."""

from __future__ import annotations

import json
import random

import pytest

from sandbank.server.api.output_lines import output_json


def _general(kind: str, data: bytes, offset: int) -> bytes:
    text = data.decode("ascii")
    return json.dumps(
        {"type": kind, "data": text, "offset": offset}, separators=(",", ":")
    ).encode()


@pytest.mark.parametrize("byte", range(128))
def test_each_ascii_byte_matches_the_general_encoder(byte: int) -> None:
    data = b"a" + bytes([byte]) * 3 + b"z"
    line = output_json("stdout", data, 7)
    if line is None:  # controls other than \n \r \t, and DEL, take the general path
        assert byte < 0x20 or byte == 0x7F
        assert byte not in (0x09, 0x0A, 0x0D)
        return
    assert line == _general("stdout", data, 7)
    assert json.loads(line)["data"].encode() == data


def test_mixed_text_matches_and_round_trips() -> None:
    rng = random.Random(5)
    alphabet = bytes(range(0x20, 0x7F)) + b'\n\r\t\\"'
    for size in (0, 1, 100, 65536):
        data = bytes(rng.choice(alphabet) for _ in range(size))
        line = output_json("stderr", data, size)
        assert line == _general("stderr", data, size)
        assert json.loads(line) == {"type": "stderr", "data": data.decode(), "offset": size}


def test_non_ascii_takes_the_general_path() -> None:
    assert output_json("stdout", "é".encode(), 0) is None
    assert output_json("stdout", b"ok\x00", 0) is None


def test_sse_and_ndjson_forms_of_a_written_event_match_the_general_ones() -> None:
    from sandbank.server.api.processes import _line, _sse

    data = b'say "hi"\n\tback\\slash\r\n'
    event = {"type": "stderr", "data": data.decode(), "offset": 3}
    line = output_json("stderr", data, 3)
    assert line is not None
    assert _line(line) == _line(event)
    assert _sse(line) == _sse(event)
