"""The JSON text of an output event written straight from its bytes.

Encoding a large output through ``json.dumps`` (decode, escape scan, encode,
newline) costs ~3 ms of server CPU per megabyte, most of a streamed command's
server time. Output that is printable ASCII plus newlines, tabs and carriage
returns (nearly all of it) needs only four characters escaped, which
``bytes.replace`` does at memory speed. The text is byte for byte what
``json.dumps(..., separators=(",", ":"))`` gives for the same event, so the
wire format does not change; anything else returns None and takes the
general path.
"""

from __future__ import annotations

#: Bytes that stand for themselves in JSON text, and the three whitespace
#: characters with a short escape; anything else (other control characters,
#: DEL, non-ASCII) takes ``json.dumps``, which spells it ``\\uXXXX``.
_PLAIN = bytes(range(0x20, 0x7F)) + b"\n\r\t"


def json_string_body(data: bytes) -> bytes | None:
    """``data`` as the inside of a JSON string, or None when it holds bytes
    that need the general encoder."""
    if not data.isascii() or data.translate(None, _PLAIN):
        return None
    return (
        data.replace(b"\\", b"\\\\")
        .replace(b'"', b'\\"')
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\t", b"\\t")
    )


def output_json(kind: str, data: bytes, offset: int) -> bytes | None:
    """``{"type":kind,"data":...,"offset":offset}`` as compact JSON, or None."""
    body = json_string_body(data)
    if body is None:
        return None
    return b'{"type":"%s","data":"%b","offset":%d}' % (kind.encode(), body, offset)
