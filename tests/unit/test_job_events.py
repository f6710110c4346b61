"""Output frames of the agent read into events: consecutive frames of a stream
that have already arrived become one event; nothing is waited for to merge."""

from __future__ import annotations

import asyncio
import socket

from sandbank.protocol.agent import CHUNK, STDERR, STDOUT, encode, encode_json
from sandbank.runtime.agent_client import _Link
from sandbank.runtime.job_events import output_events

EXIT = {
    "event": "exit", "pid": 5, "tag": None, "cmd": ["x"], "cwd": "/", "user": "root",
    "started_at": 1.0, "running": False, "exit_code": 0,
}  # fmt: skip


async def _events(frames: bytes, later: bytes = b"") -> list[tuple[str, bytes, int]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    # From a thread: more than the socket buffer holds goes in while we read.
    sending = asyncio.create_task(asyncio.to_thread(theirs.sendall, frames))
    await asyncio.sleep(0.05)
    link = _Link(ours, asyncio.get_running_loop())
    got: list[tuple[str, bytes, int]] = []
    try:
        async for event in output_events(link, 10):
            got.append((event.kind, event.data, event.offset))
            if later:
                theirs.sendall(later)
                later = b""
        await sending
    finally:
        ours.close()
        theirs.close()
    return got


async def test_frames_already_here_merge_per_stream_in_order() -> None:
    frames = (
        encode(STDOUT, b"ab") + encode(STDOUT, b"cd") + encode(STDERR, b"E")
        + encode(STDOUT, b"ef") + encode_json(EXIT)
    )  # fmt: skip
    got = await _events(frames)
    assert got == [
        ("stdout", b"abcd", 10),
        ("stderr", b"E", 14),
        ("stdout", b"ef", 15),
        ("exit", b"", 17),
    ]


async def test_a_frame_still_to_come_is_not_waited_for() -> None:
    got = await _events(encode(STDOUT, b"one"), later=encode(STDOUT, b"two") + encode_json(EXIT))
    assert [event[:2] for event in got] == [
        ("stdout", b"one"),
        ("stdout", b"two"),
        ("exit", b""),
    ]


async def test_a_merged_event_stays_within_a_frame_limit() -> None:
    piece = b"x" * (CHUNK // 4 + 1)
    got = await _events(encode(STDOUT, piece) * 8 + encode_json(EXIT))
    sizes = [len(data) for kind, data, _ in got if kind == "stdout"]
    assert sum(sizes) == 8 * len(piece) and len(sizes) > 1
    assert max(sizes) < CHUNK + len(piece)
