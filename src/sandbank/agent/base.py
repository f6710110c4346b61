"""What the agent's operations share: users, paths, file entries and the
errno -> error-code mapping (the connection and the log are in ``conn``).

Stdlib only, and cheap to import; it is loaded right after the agent's first
answer, off the start path.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

from sandbank.agent.conn import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Relative paths resolve against this user's home when a request names no user.
DEFAULT_USER = "user"
#: Testing aid, never set inside a sandbox: homes live in ``<dir>/<name>``, and a
#: missing ``user`` account maps to the agent's own uid/gid, so the agent can run
#: on a host that has no such account.
HOME_ROOT_ENV = "SANDBANK_AGENT_HOME_ROOT"


# -- users ---------------------------------------------------------------------


class Identity:
    __slots__ = ("gid", "groups", "home", "name", "uid")

    def __init__(self, name: str, uid: int, gid: int, groups: list[int], home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home


def identity(name: object) -> Identity:
    """Look the user up in the sandbox's own passwd/group databases, every time:
    commands inside the sandbox may add users."""
    if name is None:
        name = DEFAULT_USER
    if not isinstance(name, str) or not name:
        raise errors.BadRequest("user must be a non-empty string")
    home_root = os.environ.get(HOME_ROOT_ENV)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if home_root and name == DEFAULT_USER:
            return Identity(name, os.getuid(), os.getgid(), [], os.path.join(home_root, name))
        raise errors.BadRequest(f"unknown user {name!r}") from None
    try:
        groups = os.getgrouplist(name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    home = os.path.join(home_root, name) if home_root else entry.pw_dir
    return Identity(name, entry.pw_uid, entry.pw_gid, groups, home)


def chown(path: str, who: Identity) -> None:
    """Hand a new file to its user; a non-root agent (tests) owns everything anyway."""
    if os.geteuid() == 0:
        os.lchown(path, who.uid, who.gid)


# -- paths -----------------------------------------------------------------------


def resolve(path: object, user: Identity | str | None = None) -> str:
    """A normalised absolute sandbox path; relative ones start at the user's home."""
    if not isinstance(path, str) or not path:
        raise errors.InvalidPath("path must be a non-empty string")
    if "\0" in path:
        raise errors.InvalidPath("path must not contain a NUL byte")
    if not path.startswith("/"):
        home = user.home if isinstance(user, Identity) else identity(user).home
        path = os.path.join(home, path)
    full = os.path.normpath(path)
    # POSIX lets normpath keep exactly two leading slashes; the sandbox has no use for them.
    return "/" + full.lstrip("/")


def make_dirs(path: str, who: Identity) -> list[str]:
    """``mkdir -p`` that hands every directory it creates to ``who``; returns them, top first."""
    missing: list[str] = []
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            missing.append(probe)
            probe = os.path.dirname(probe)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise errors.NotADirectory(f"{probe} exists and is not a directory")
        break
    created: list[str] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise errors.NotADirectory(f"{directory} exists and is not a directory") from None
            continue
        chown(directory, who)
        created.append(directory)
    return created


def remove_dirs(created: list[str]) -> None:
    """Undo ``make_dirs`` after a failed operation, leaving anything that gained content."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return


# -- entries ---------------------------------------------------------------------


class Names:
    """uid/gid -> name, cached for one operation (a listing stats many files)."""

    __slots__ = ("_groups", "_users")

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def group(self, gid: int) -> str:
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
            self._groups[gid] = name
        return name


def entry(
    path: str, st: os.stat_result | None = None, names: Names | None = None
) -> dict[str, Any]:
    """The wire form of one file; ``st`` defaults to an lstat (links are reported, not followed)."""
    if st is None:
        st = os.lstat(path)
    names = names or Names()
    mode = st.st_mode
    target = None
    if stat.S_ISLNK(mode):
        kind = "symlink"
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISREG(mode):
        kind = "file"
    else:
        kind = "other"
    return {
        "name": os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(mode),
        "permissions": stat.filemode(mode)[1:],
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "modified_at": st.st_mtime,
        "symlink_target": target,
    }


# -- errors ------------------------------------------------------------------------

_BY_ERRNO: dict[int, type[errors.SandbankError]] = {}


def _error_classes() -> dict[int, type[errors.SandbankError]]:
    if not _BY_ERRNO:  # built on first use: see ``conn.errors``
        _BY_ERRNO.update(
            {
                errno.ENOENT: errors.FileNotFound,
                errno.EISDIR: errors.IsADirectory,
                errno.ENOTDIR: errors.NotADirectory,
                errno.EEXIST: errors.FileExists,
                errno.ENOTEMPTY: errors.Conflict,
                errno.EACCES: errors.PermissionDenied,
                errno.EPERM: errors.PermissionDenied,
                errno.EROFS: errors.PermissionDenied,
                errno.ENOSPC: errors.DiskFull,
                errno.EDQUOT: errors.DiskFull,
                errno.ENAMETOOLONG: errors.InvalidPath,
                errno.EINVAL: errors.BadRequest,
            }
        )
    return _BY_ERRNO


def os_error(exc: OSError) -> errors.SandbankError:
    """The error code a client can act on, with the path the kernel complained about."""
    reason = exc.strerror or str(exc)
    where = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None]
    message = f"{' -> '.join(where)}: {reason}" if where else reason
    cls = _error_classes().get(exc.errno or 0, errors.RuntimeFailure)
    return cls(message)
