"""Batch writes, ownership and permission changes, and finding files by pattern."""

from __future__ import annotations

import os
import re
import stat
import tarfile

from sandbank.agent.archive import Upload, upload_error
from sandbank.agent.base import Identity, Names, entry, identity, make_dirs, remove_dirs, resolve
from sandbank.agent.conn import Conn, errors, suppress
from sandbank.agent.files import _mode, _refuse, _target, _temp_name
from sandbank.protocol.agent import FrameError
from sandbank.protocol.tarstream import FILE_TYPES, TarParser, TarStreamError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Most matches ``find`` returns; a request may ask for fewer.
MAX_MATCHES = 10_000


# -- write_files -------------------------------------------------------------------


def write_files(conn: Conn, req: dict[str, Any]) -> None:
    """``write_files`` {user} + D*, Z (a tar of regular files named by their
    destination paths) -> ok+entries.

    All or nothing: every file goes to a temp file beside its target, and the
    renames happen only once the whole stream arrived and every file was
    written. Any failure removes every temp file and names the file at fault.
    """
    upload = Upload(conn)
    batch: _Batch | None = None
    failure: errors.SandbankError | None = None
    try:
        batch = _Batch(identity(req.get("user")))
        upload.into(batch)
        batch.current = ""
        if not batch.pending:
            raise errors.BadRequest("the request names no files to write")
        for tmp, target in batch.pending:
            os.replace(tmp, target)
        targets = [target for _, target in batch.pending]
        batch.pending = []
        batch.created = []
        names = Names()
        conn.ok(entries=[entry(target, None, names) for target in targets])
    except (FrameError, ConnectionError):
        raise
    except (errors.SandbankError, TarStreamError, OSError) as exc:
        failure = _naming(upload_error(exc), batch.current if batch else "")
    finally:
        # Cleaned up before any answer: a client told of a failure finds nothing left.
        if batch is not None:
            batch.discard()
    if failure is not None:
        _refuse(conn, failure, upload.ended)


class _Batch(TarParser):
    """Writes each member to a temp file beside its destination."""

    def __init__(self, who: Identity) -> None:
        super().__init__()
        self.who = who
        self.pending: list[tuple[str, str]] = []
        self.created: list[str] = []
        self.current = ""
        self._fd = -1
        self._existing: os.stat_result | None = None

    def member(self, info: tarfile.TarInfo) -> None:
        self.current = info.name
        if info.type not in FILE_TYPES:
            raise errors.BadRequest("only regular files can be written")
        target, self._existing = _target(resolve(info.name, self.who))
        self.created += make_dirs(os.path.dirname(target), self.who)
        tmp = _temp_name(target)
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.pending.append((tmp, target))

    def data(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view) :]

    def member_done(self, info: tarfile.TarInfo) -> None:
        fd, self._fd = self._fd, -1
        try:
            _settle(fd, self._existing, _member_mode(info), self.who.uid, self.who.gid)
        finally:
            os.close(fd)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for tmp, _ in self.pending:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        remove_dirs(self.created)


def _member_mode(member: tarfile.TarInfo) -> int | None:
    """The mode the client asked for (a ``sandbank.mode`` pax field), if any."""
    raw = member.pax_headers.get("sandbank.mode")
    if raw is None:
        return None
    try:
        return _mode(int(raw, 8))
    except ValueError:
        raise errors.BadRequest(f"sandbank.mode {raw!r} is not an octal number") from None


def _settle(fd: int, existing: os.stat_result | None, mode: int | None, uid: int, gid: int) -> None:
    """Owner and mode as ``write`` gives them: an overwrite keeps the old file's."""
    if existing is not None:
        uid, gid = existing.st_uid, existing.st_gid
        mode = stat.S_IMODE(existing.st_mode) if mode is None else mode
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, 0o644 if mode is None else mode)


def _naming(exc: errors.SandbankError, name: str) -> errors.SandbankError:
    """The same error, its message saying which file of the batch failed."""
    if name:
        exc.message = f"{name}: {exc.message}"
        exc.args = (exc.message,)
    return exc


# -- chmod / chown -----------------------------------------------------------------


def chmod(conn: Conn, req: dict[str, Any]) -> None:
    """``chmod`` {path, mode, user} -> ok+entry. Symlinks are followed, as chmod(1) does."""
    path = resolve(req.get("path"), req.get("user"))
    mode = _mode(req.get("mode"))
    if mode is None:
        raise errors.BadRequest("mode is required")
    os.chmod(path, mode)
    conn.ok(entry=entry(path))


def chown(conn: Conn, req: dict[str, Any]) -> None:
    """``chown`` {path, owner, group, recursive, user} -> ok+entry; links are not followed."""
    path = resolve(req.get("path"), req.get("user"))
    uid = _user_id(req.get("owner"))
    gid = _group_id(req.get("group"))
    if uid == -1 and gid == -1:
        raise errors.BadRequest("name an owner, a group or both")
    os.lchown(path, uid, gid)
    if req.get("recursive") and stat.S_ISDIR(os.lstat(path).st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with suppress(FileNotFoundError):
                    os.lchown(os.path.join(root, name), uid, gid)
    conn.ok(entry=entry(path))


def _user_id(raw: object) -> int:
    import pwd

    return _numeric_id(raw, lambda name: pwd.getpwnam(name).pw_uid, "user", "owner", "uid")


def _group_id(raw: object) -> int:
    import grp

    return _numeric_id(raw, lambda name: grp.getgrnam(name).gr_gid, "group", "group", "gid")


def _numeric_id(raw: object, lookup: Callable[[str], int], kind: str, field: str, num: str) -> int:
    """A uid or gid from a number or a name; -1 (unchanged) for None."""
    if raw is None:
        return -1
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and raw:
        if raw.isdigit():
            return int(raw)
        try:
            return lookup(raw)
        except KeyError:
            raise errors.BadRequest(f"unknown {kind} {raw!r}") from None
    raise errors.BadRequest(f"{field} must be a {kind} name or a {num}")


# -- find --------------------------------------------------------------------------


def find(conn: Conn, req: dict[str, Any]) -> None:
    """``find`` {path, pattern, limit, user} -> ok+entries (sorted by path).

    ``pattern`` is a glob relative to ``path``: ``*``, ``?`` and ``[...]`` stay
    within one name, ``**`` spans any number of directories. Symlinks are
    listed, never descended into. More than ``limit`` matches is
    ``payload_too_large``: the answer is never silently cut short.
    """
    top = resolve(req.get("path"), req.get("user"))
    pattern = req.get("pattern")
    if not isinstance(pattern, str) or not pattern or pattern.startswith("/") or "\0" in pattern:
        raise errors.BadRequest("pattern must be a non-empty glob relative to path")
    limit = req.get("limit", MAX_MATCHES)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MATCHES:
        raise errors.BadRequest(f"limit must be an integer between 1 and {MAX_MATCHES}")
    if not stat.S_ISDIR(os.stat(top).st_mode):
        raise errors.NotADirectory(f"{top} is not a directory")
    regex = compile_glob(pattern)
    depth = None if "**" in pattern else pattern.count("/") + 1
    found: list[str] = []
    for root, dirs, files in os.walk(top):
        rel_root = os.path.relpath(root, top)
        level = 0 if rel_root == "." else rel_root.count("/") + 1
        if depth is not None and level + 1 >= depth:
            dirs_to_walk: list[str] = []
        else:
            dirs_to_walk = dirs
        for name in dirs + files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if regex.fullmatch(rel):
                found.append(os.path.join(root, name))
                if len(found) > limit:
                    raise errors.PayloadTooLarge(
                        f"more than {limit} paths under {top} match {pattern!r}; "
                        "narrow the pattern or raise the limit"
                    )
        dirs[:] = dirs_to_walk
    names = Names()
    entries = []
    for path in sorted(found):
        with suppress(FileNotFoundError):
            entries.append(entry(path, None, names))
    conn.ok(entries=entries)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression over relative paths."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append(f"[{'^' if negate else ''}{re.escape(body).replace(chr(92) + '-', '-')}]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
