"""The wire format between the server and the agent inside each sandbox.

Stdlib only: the agent imports this inside sandboxes.

One unix-socket connection carries one operation. Everything on it is a frame:
``kind`` (1 byte) + ``length`` (4 bytes, big-endian) + ``payload``.

* ``J`` a JSON object: the request header, the response header, events.
* ``D`` a chunk of file data; ``Z`` (empty) ends a data stream. A stream cut
  before its ``Z`` is an aborted transfer, never a short file.
* ``O`` / ``E`` chunks of a process's stdout / stderr.

A request is ``J{"op": ..., ...}`` (+ ``D``* ``Z`` for uploads). Every answer
starts with ``J{"ok": true, ...}`` or ``J{"ok": false, "code", "message"}``
where ``code`` is one of ``sandbank.errors``. Once an ``ok`` header is out, a
failure can only cut the connection: the client sees a stream without its end.
Operations:

``ping``   -> ok, pid, version
``exec``   {cmd, env, cwd, user, timeout, stdin_b64} -> ok+pid, O/E*, J{exit_code, timed_out,
           duration_ms}
``read``   {path} -> ok+entry, D*, Z
``write``  {path, user, mode} + D*, Z -> ok+entry (written atomically: temp file + rename)
``list``   {path, depth} -> ok+entries
``stat``   {path} -> ok+entry
``move``   {src, dst, user} -> ok+entry
``mkdir``  {path, user} -> ok+created+entry
``remove`` {path, recursive} -> ok
``hostname`` {name} -> ok (/etc/hostname and the ``127.0.1.1`` line of /etc/hosts)
``park`` -> ok {listen_fd, wake_fd, pipe} (before a checkpoint: the listening socket
  is replaced by a pipe; a byte written to ``wake_fd`` makes the agent fetch a new
  one from ``HANDOFF_NAME`` in its run dir; see agent/parking.py)

File trees, batches, ownership, search and watches (docs/files.md):

``read``   {path, encoding} -> as above; with ``encoding`` the whole file must decode first
           (``not_text`` otherwise, before the ok)
``tar``    {path, user} -> ok+entry, D*, Z (a tar of the directory, names relative to it)
``untar``  {path, user, overwrite} + D*, Z -> ok+entry (unpacked beside the target, renamed
           into place after Z; escapes are ``invalid_path``)
``write_files`` {user} + D*, Z (a tar of regular files named by their destination paths)
           -> ok+entries (all or nothing)
``chmod``  {path, mode, user} -> ok+entry
``chown``  {path, owner, group, recursive, user} -> ok+entry
``find``   {path, pattern, limit, user} -> ok+entries (more than limit: ``payload_too_large``)
``watch``  {path, recursive, user} -> ok+path, then J{event: fs, type, name, is_dir} |
           J{event: keepalive} | J{event: overflow} | J{event: end, reason} until hang-up

Background processes (they outlive every connection, the server's included,
unless started with ``foreground``):

``start``  {cmd, env, cwd, user, tag, timeout, stdin, stdin_b64, max_output, show_env,
           foreground} -> ok+pid+tag+job [then, foreground, as ``attach`` from 0]
``jobs``   {} -> ok+jobs
``attach`` {pid, offset, follow} -> ok+job, O/E/J{event: truncated}*, J{event: exit|more}
``wait``   {pid, timeout} -> ok+job
``stdin``  {pid, data_b64, close} -> ok+written
``signal`` {pid, signal} -> ok+signal
``resize`` {pid, cols, rows} -> ok+cols+rows (terminals only)

A job is ``{pid, tag, cmd, cwd, env_keys, env, kind, user, started_at, ended_at,
running, exit_code, signal, timed_out, stdin, output_bytes, truncated}``: ``signal`` is
the one that killed it (``exit_code`` is then 128+N), ``stdin`` is ``none``,
``bytes``, ``open`` or ``closed``, ``truncated`` lists the streams that hit
their cap, ``output_bytes`` counts what was kept of both streams.

An entry is ``{name, path, type, size, mode, permissions, owner, group, modified_at,
symlink_target}``; ``type`` is ``file``, ``dir``, ``symlink`` or ``other``;
``mode`` holds the permission bits, ``permissions`` the same as ``rwxr-xr-x``.

Details every implementation keeps:

* ``user`` is optional everywhere (default ``user``) and also accepted by
  ``read``, ``list``, ``stat`` and ``remove``. Relative paths start at that
  user's home; what ``write``, ``move`` and ``mkdir`` create belongs to them.
* ``exec``: ``cmd`` is an argv list (no shell). ``cwd`` defaults to the user's
  home; ``env`` gets PATH, HOME, USER, LOGNAME, SHELL and LANG where it lacks
  them, nothing else; no ``stdin_b64`` means /dev/null. ``timeout`` is in
  seconds, null for none; on expiry the command's whole process group is
  killed and ``timed_out`` is true. A death by signal N is exit code 128+N.
  A command that cannot be executed still answers ok, with ``pid`` null, a
  message on ``E`` and exit code 127 (not found) or 126. The client keeps its
  side open until the exit frame: a hang-up cancels the command (its process
  group is killed).
* ``write``: ``mode`` (permission bits) is optional; an overwrite keeps the old
  file's owner and mode. The agent may answer an error *before* the ``Z`` (a
  directory in the way, a full disk); it then reads and discards the rest of
  the stream, so a client that watches for the answer while sending can stop
  early and hang up.
* ``list``: ``depth`` >= 1; depth first, sorted by name, never descending into
  symlinks; more than 50,000 entries is ``payload_too_large``.
* ``mkdir`` creates parents; ``created`` is false if the directory was there.
* ``untar`` and ``write_files`` answer like ``write``: a refusal may come before
  the ``Z`` (the rest is discarded), and everything they created is removed
  before any answer, so a client told of a failure finds nothing left behind.
  ``untar`` refuses absolute names, ``..``, writes through links leading out,
  symlinks and hard links pointing outside, device nodes and FIFOs, and drops
  set-id bits. ``write_files`` takes a ``sandbank.mode`` pax field per file.
* ``watch`` types are ``create`` (also the far side of a rename), ``write``,
  ``remove``, ``rename`` (the near side) and ``chmod``; one kernel event may
  give several. ``recursive`` also watches directories created later. A
  keepalive goes out after 15 s of silence; the watch ends when the client
  hangs up or the watched directory goes (``end``).
* ``remove`` refuses ``/``; a non-empty directory needs ``recursive``
  (``conflict`` otherwise).
* ``start`` takes what ``exec`` takes and answers at once. ``timeout`` 0 or
  null is none. ``stdin`` is ``none`` (/dev/null), ``bytes`` (``stdin_b64``,
  all of it up front) or ``open`` (fed by ``stdin`` operations until one
  closes it). ``max_output`` (bytes per stream; default 16 MiB, the
  server sets its own) bounds what is kept: the head of each stream; the first byte past it is
  recorded as a ``truncated`` event. A command that cannot be executed is
  ``bad_request`` with ``exit_code`` 127 or 126. ``show_env`` names the
  variables the job reports with their values in ``env`` (the others only by
  name in ``env_keys``). With ``foreground: true`` the output follows the
  answer on the same connection (as ``attach`` from 0, live output included),
  ``kind`` is ``foreground``, and a hang-up before the exit kills the process
  group; the process waits for that reader rather than lose output past the
  cap. Otherwise ``kind`` is ``background``.
* ``attach`` replays the output from ``offset`` (bytes of both streams
  together, in the order they were written), then with ``follow`` (the
  default) live output, and ends with ``J{"event": "exit", ...job}``. With
  ``follow: false`` a running process ends the stream with
  ``J{"event": "more", "offset": N}`` (where to resume). Any number of clients
  may attach at once; hanging up never touches the process. A following
  reader also gets the output past the cap (not stored) from a window in
  memory; one that falls behind it gets ``J{"event": "truncated", "stream":
  "live"}`` where output was lost. Consecutive chunks of a stream may arrive
  merged into one frame.
* ``wait`` answers once the process has ended; ``timeout`` (seconds, 0 or null
  for none) runs out as ``timeout``.
* An unknown ``pid`` is ``not_found`` (with ``pid``). ``stdin`` and ``signal``
  on a process that has ended are ``conflict`` with ``exit_code``; ``stdin``
  not opened or already closed is ``conflict`` too. ``signal`` (a number or a
  name, ``TERM`` or ``SIGTERM``) goes to the whole process group.
* Ended processes stay listed for 10 minutes. All of this lives as long as
  the agent does.
* Terminals: ``start`` with ``pty: {cols, rows}`` (1-65535 each) runs the
  command on a pseudo-terminal, as the leader of a new session with the pty as
  its controlling terminal; an empty or missing ``cmd`` is the user's login
  shell (``[shell, "-l"]``), and ``env`` gets TERM=xterm-256color,
  LANG/LC_ALL=C.UTF-8 where it lacks them. Its job has ``stdin: "pty"`` and
  ``pty: {cols, rows}``. ``stdin`` writes to the terminal (``close`` is
  ignored: ``^D`` is a terminal's end of input); ``attach`` replays from the
  last 512 KiB of output (one stream, ``O`` frames) and, when ``offset`` is
  older than that, starts with ``J{"event": "truncated", "stream": "pty",
  "offset": N}``; ``signal`` goes to every process of its session; ``resize``
  on a process without a terminal is ``conflict``, on one that ended
  ``conflict`` with ``exit_code``. At most 32 terminals run at once:
  ``quota_exceeded`` past that.
* ``hostname`` rewrites the files only, keeping every other line of /etc/hosts
  (a ``127.0.1.1`` line is added if there is none). The kernel's hostname is the
  runtime's to set: a container's agent lacks CAP_SYS_ADMIN.
"""

from __future__ import annotations

import struct

# Annotation-only imports: the agent starts on every sandbox's critical path and
# importing asyncio alone costs it tens of milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import asyncio
    from collections.abc import Callable
    from typing import Any

VERSION = "1"

JSON = b"J"
DATA = b"D"
END = b"Z"
STDOUT = b"O"
STDERR = b"E"

HEADER = struct.Struct(">cI")
#: Largest frame either side accepts; data is chunked well below this.
MAX_FRAME = 16 * 1024 * 1024
CHUNK = 256 * 1024
#: File data goes in larger frames: fewer frames, system calls and copies per byte.
FILE_CHUNK = 1024 * 1024

#: Inside the sandbox: where the agent listens and where its code is mounted.
SOCKET_DIR = "/run/sandbank"
SOCKET_NAME = "agent.sock"
#: Where the runtime offers a parked agent its new listening socket; no longer
#: than SOCKET_NAME, whose full host path was checked to fit a socket address.
HANDOFF_NAME = "handoff"
AGENT_LIB = "/opt/sandbank/lib"


class FrameError(Exception):
    """The peer sent something that is not a frame, or hung up mid-frame."""


# -- JSON ------------------------------------------------------------------------
#
# ``import json`` costs the agent ~8 ms of every sandbox start: the package
# compiles regular expressions for its pure-Python fallbacks, which pulls in re,
# enum, functools and collections. The C accelerator that json itself runs on
# needs none of that, so frames are coded with it directly, exactly as
# ``json.dumps(obj, separators=(",", ":"))`` and ``json.loads`` would; where it is
# missing or different (another interpreter), json itself is used.

_WHITESPACE = " \t\n\r"


def _not_serializable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _ScanContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")
    }.__getitem__  # fmt: skip
    memo: dict[str, str] = {}


def _c_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    import _json

    encoder = _json.make_encoder(
        None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    # The scanner reads its settings off a JSONDecoder; this stands in for one.
    scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]

    def dumps(obj: Any) -> str:
        return "".join(encoder(obj, 0))

    def loads(text: str) -> Any:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            obj, end = scanner(text, start)
        except StopIteration as exc:
            raise ValueError(f"Expecting value: char {exc.value}") from None
        if text[end:].strip(_WHITESPACE):
            raise ValueError(f"Extra data: char {end}")
        return obj

    return dumps, loads


def _py_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    return dumps, json.loads


def _codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    sample = {"s": '\u00e9\n"', "n": [1, -2.5, None, True, False, 10**20], "d": {}}
    text = '{"s":"\\u00e9\\n\\"","n":[1,-2.5,null,true,false,100000000000000000000],"d":{}}'
    try:
        dumps, loads = _c_codec()
        if dumps(sample) == text and loads(f" {text} ") == sample:
            return dumps, loads
    except Exception:  # an interpreter without the accelerator, or with another one
        pass
    return _py_codec()


json_dumps, json_loads = _codec()


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(obj: dict[str, Any]) -> bytes:
    return encode(JSON, json_dumps(obj).encode())


def decode_json(payload: bytes) -> dict[str, Any]:
    obj = json_loads(payload.decode("utf-8", "surrogatepass"))
    if not isinstance(obj, dict):
        raise FrameError("JSON frame is not an object")
    return obj


# -- blocking side (the agent) -------------------------------------------------


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FrameError("connection closed mid-frame" if buf else "connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: _socket.socket) -> tuple[bytes, bytes]:
    kind, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is too large")
    return kind, _recv_exact(sock, length) if length else b""


def recv_json(sock: _socket.socket) -> dict[str, Any]:
    kind, payload = recv_frame(sock)
    if kind != JSON:
        raise FrameError(f"expected a JSON frame, got {kind!r}")
    return decode_json(payload)


def send_json(sock: _socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(encode_json(obj))


# -- asyncio side (the server) ---------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    import asyncio

    try:
        head = await reader.readexactly(HEADER.size)
        kind, length = HEADER.unpack(head)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes is too large")
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise FrameError("agent closed the connection mid-frame") from exc
    return kind, payload


async def read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    kind, payload = await read_frame(reader)
    if kind != JSON:
        raise FrameError(f"expected a JSON frame, got {kind!r}")
    return decode_json(payload)
