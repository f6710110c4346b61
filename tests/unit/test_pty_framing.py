"""The terminal WebSocket's control frames (``sandbank.protocol.pty_ws``)."""

from __future__ import annotations

import json

import pytest

from sandbank.protocol import pty_ws


def test_server_events_are_compact_json_with_a_type() -> None:
    text = pty_ws.event("exit", exit_code=3, signal=None)
    assert text == '{"type":"exit","exit_code":3,"signal":null}'
    assert pty_ws.parse_event(text) == {"type": "exit", "exit_code": 3, "signal": None}


def test_client_frames_round_trip() -> None:
    assert pty_ws.parse_control(pty_ws.resize(120, 40)) == pty_ws.Resize(120, 40)
    assert pty_ws.parse_control('{"type":"input","data":"ls\\r"}') == pty_ws.Input(b"ls\r")
    assert pty_ws.parse_control(json.dumps({"type": "input", "data": "é"})) == pty_ws.Input(
        "é".encode()
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "JSON object"),
        ("[1, 2]", "JSON object"),
        ('{"type": "resize", "cols": "80", "rows": 24}', "integer"),
        ('{"type": "resize", "cols": true, "rows": 24}', "integer"),
        ('{"type": "resize", "cols": 80}', "integer"),
        ('{"type": "input", "data": 5}', "string"),
        ('{"type": "kill"}', "unknown control frame type 'kill'"),
        ("{}", "unknown control frame type None"),
        ('{"type": "input", "data": "' + "x" * pty_ws.MAX_CONTROL + '"}', "at most"),
    ],
)
def test_bad_client_frames_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(pty_ws.FramingError, match=says):
        pty_ws.parse_control(text)


def test_a_server_frame_without_a_type_is_refused() -> None:
    with pytest.raises(pty_ws.FramingError):
        pty_ws.parse_event('{"exit_code": 1}')
