"""File operations. Data streams through in ``CHUNK``-sized frames: no file is
ever held whole in memory, however large.

The agent runs as root; ``user`` decides where relative paths start and who owns
what an operation creates, not what it may touch.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbank.agent.base import (
    Names,
    entry,
    identity,
    make_dirs,
    os_error,
    remove_dirs,
    resolve,
)
from sandbank.agent.conn import Conn, errors, suppress
from sandbank.protocol.agent import CHUNK, DATA, END, FILE_CHUNK, FrameError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: A listing is one JSON frame; past this many entries it would approach MAX_FRAME.
MAX_ENTRIES = 50_000


def read(conn: Conn, req: dict[str, Any]) -> None:
    path = resolve(req.get("path"), req.get("user"))
    # O_NONBLOCK: opening a FIFO must not hang the agent; it is refused just below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise errors.IsADirectory(f"{path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise errors.BadRequest(f"{path} is not a regular file")
        encoding = req.get("encoding")
        decoder = None if encoding is None else _text_decoder(fd, path, encoding)
        conn.ok(entry=entry(path, st))
        while chunk := os.read(fd, FILE_CHUNK):
            if decoder is not None:
                decoder.decode(chunk)  # changed since the check: cut the stream
            conn.send(DATA, chunk)
        if decoder is not None:
            decoder.decode(b"", final=True)
        conn.send(END)
    finally:
        os.close(fd)


def _text_decoder(fd: int, path: str, encoding: object) -> Any:
    """Check the whole file decodes as ``encoding`` before answering (a second
    pass over the disk, not memory), so binary data on a text read is a clear
    error rather than a broken stream. Returns a fresh decoder for the send."""
    import codecs

    if not isinstance(encoding, str) or not encoding:
        raise errors.BadRequest("encoding must be a non-empty string")
    try:
        factory = codecs.getincrementaldecoder(encoding)
    except LookupError:
        raise errors.BadRequest(f"unknown text encoding {encoding!r}") from None
    decoder = factory("strict")
    offset = 0
    try:
        while chunk := os.read(fd, CHUNK):
            decoder.decode(chunk)
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise errors.NotText(
            f"{path} is not {encoding} text (byte {offset + exc.start} cannot be decoded); "
            "read it as bytes instead",
            encoding=encoding,
        ) from None
    os.lseek(fd, 0, os.SEEK_SET)
    return factory("strict")


def write(conn: Conn, req: dict[str, Any]) -> None:
    """Atomic: the data goes to a temp file next to the target, renamed over it
    only after the ``Z`` frame. A stream cut before ``Z`` removes the temp file
    (and any parent it created), leaving the target as it was.

    A failure is answered at once, even mid-stream; the rest of the stream is
    then read and discarded so the client never hits a closed socket before it
    has seen the answer.
    """
    created: list[str] = []
    tmp: str | None = None
    fd = -1
    received = False
    failure: errors.SandbankError | None = None
    try:
        who = identity(req.get("user"))
        path = resolve(req.get("path"), who)
        mode = _mode(req.get("mode"))
        target, existing = _target(path)
        created = make_dirs(os.path.dirname(target), who)
        tmp = _temp_name(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if not _receive(conn, fd):
            return
        received = True
        if existing is not None:
            # Overwriting keeps the file's owner and permissions, as editing in place would.
            if os.geteuid() == 0:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            os.fchmod(fd, stat.S_IMODE(existing.st_mode) if mode is None else mode)
        else:
            if os.geteuid() == 0:
                os.fchown(fd, who.uid, who.gid)
            os.fchmod(fd, 0o644 if mode is None else mode)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
        tmp = None
        created = []
        conn.ok(entry=entry(target))
    except (FrameError, ConnectionError):
        raise
    except (errors.SandbankError, OSError) as exc:
        failure = exc if isinstance(exc, errors.SandbankError) else os_error(exc)
    finally:
        # Cleaned up before any answer: a client told of a failure finds nothing left.
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            _unlink(tmp)
        remove_dirs(created)
    if failure is not None:
        _refuse(conn, failure, received)


def _target(path: str) -> tuple[str, os.stat_result | None]:
    """Where the data lands (through a symlink, as a shell redirect would) and
    what is there now."""
    if path == "/":
        raise errors.IsADirectory("/ is a directory")
    if os.path.islink(path):
        path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path, None
    if stat.S_ISDIR(st.st_mode):
        raise errors.IsADirectory(f"{path} is a directory")
    return path, st


def _receive(conn: Conn, fd: int) -> bool:
    """Copy D frames into ``fd`` until Z. False when the client went away first."""
    while True:
        try:
            kind, view = conn.recv_view()
        except (FrameError, ConnectionError):
            return False
        if kind == END:
            return True
        if kind != DATA:
            raise errors.BadRequest(f"expected a data frame, got {kind!r}")
        while view:
            view = view[os.write(fd, view) :]


def _temp_name(target: str) -> str:
    # Hidden, unique, and short enough that a 255-byte target name still fits.
    name = os.fsdecode(os.fsencode(os.path.basename(target))[:180])
    return os.path.join(os.path.dirname(target), f".{name}.{os.urandom(6).hex()}.sandbank-tmp")


def _refuse(conn: Conn, exc: errors.SandbankError, received: bool) -> None:
    """Answer now, then discard what is left of the stream up to Z or a hang-up."""
    conn.fail(exc)
    while not received:
        try:
            kind, _ = conn.recv_frame()
        except (FrameError, OSError):
            return
        if kind == END:
            return


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _mode(raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 0o7777:
        raise errors.BadRequest("mode must be an integer between 0 and 0o7777")
    return raw


def list_dir(conn: Conn, req: dict[str, Any]) -> None:
    path = resolve(req.get("path"), req.get("user"))
    depth = req.get("depth", 1)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise errors.BadRequest("depth must be an integer of at least 1")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.NotADirectory(f"{path} is not a directory")
    entries: list[dict[str, Any]] = []
    _walk(path, depth, entries, Names(), top=True)
    conn.ok(entries=entries)


def _walk(path: str, depth: int, out: list[dict[str, Any]], names: Names, top: bool) -> None:
    """Depth first, sorted by name; symlinks are listed, never descended into.
    Below the top, a directory that vanished or may not be read is skipped."""
    try:
        with os.scandir(path) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError:
        if top:
            raise
        return
    for child in children:
        try:
            st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        out.append(entry(child.path, st, names))
        if len(out) > MAX_ENTRIES:
            raise errors.PayloadTooLarge(
                f"more than {MAX_ENTRIES} entries under the listed path; list with a smaller depth"
            )
        if depth > 1 and stat.S_ISDIR(st.st_mode):
            _walk(child.path, depth - 1, out, names, top=False)


def stat_path(conn: Conn, req: dict[str, Any]) -> None:
    conn.ok(entry=entry(resolve(req.get("path"), req.get("user"))))


def move(conn: Conn, req: dict[str, Any]) -> None:
    who = identity(req.get("user"))
    src = resolve(req.get("src"), who)
    dst = resolve(req.get("dst"), who)
    if "/" in (src, dst):
        raise errors.InvalidPath("cannot move / or move anything onto /")
    os.lstat(src)
    created = make_dirs(os.path.dirname(dst), who)
    try:
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            import shutil  # only a move across filesystems needs it

            shutil.move(src, dst)
    except BaseException:
        remove_dirs(created)
        raise
    conn.ok(entry=entry(dst))


def mkdir(conn: Conn, req: dict[str, Any]) -> None:
    who = identity(req.get("user"))
    path = resolve(req.get("path"), who)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        created = bool(make_dirs(path, who))
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise errors.FileExists(f"{path} exists and is not a directory")
        created = False
    conn.ok(created=created, entry=entry(path))


def remove(conn: Conn, req: dict[str, Any]) -> None:
    path = resolve(req.get("path"), req.get("user"))
    recursive = bool(req.get("recursive", False))
    if path == "/":
        raise errors.InvalidPath("refusing to remove /")
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif recursive:
        import shutil  # rmtree is the only user; keep it off the start path

        shutil.rmtree(path)
    else:
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            raise errors.Conflict(
                f"{path} is a directory that is not empty; remove it with recursive=true"
            ) from None
    conn.ok()
