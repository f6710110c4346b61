"""Starting a command: ``posix_spawn`` from a thread that has first taken on the
command's working directory and ids.

Why not ``subprocess.Popen``: importing it costs ~8 ms (locale, re, signal,
selectors, ...) on the first command of every sandbox, and CPython 3.11/3.12
only use ``vfork`` for it when no ids are to change; a full ``fork`` of the
agent costs ~1 ms per command. ``posix_spawn`` is glibc's ``vfork`` + exec, but
takes the working directory and the ids from the calling thread. The kernel
keeps both per thread (glibc makes ids process-wide; raw system calls do not):

* ``unshare(CLONE_FS)`` gives the handler thread a working directory of its own,
  entered as root, as Popen does it (a user can be started in a directory it
  may not enter itself);
* setgroups/setresgid/setresuid as raw system calls give it the user's ids. The
  saved set-user-id stays 0 for the way back; exec replaces it with the
  effective id, and a non-root exec drops every capability;
* after the spawn the ids are switched back, and the process is marked dumpable
  again (any change of ids clears that, which would lock root inside the
  sandbox out of /proc/1).

Handler threads end with their operation, so none of this outlives it.

Every descriptor the agent opens is close-on-exec (Python's default), so a
command inherits only the three it is handed. Signals start at their defaults,
except glibc's two internal ones (32 and 33), which its posix_spawn leaves
ignored; glibc programs take them back at start-up. Where the raw calls are
unknown (another architecture), Popen with ``user``/``group`` is the fallback.
"""

from __future__ import annotations

import ctypes
import errno
import os

from sandbank.agent.conn import errors
from sandbank.agent.reaper import Spawned

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbank.agent.base import Identity

#: setgroups, setresuid, setresgid: the raw system call numbers.
_SYSCALLS = {
    "x86_64": (116, 117, 119),
    "aarch64": (159, 147, 149),
}
CLONE_FS = 0x200
PR_SET_DUMPABLE = 4
_UNCHANGED = -1
#: Python ignores these; a command must start with them at their defaults.
_RESET_SIGNALS = (13, 25)  # SIGPIPE, SIGXFSZ
_FILE_NOT_THERE = (errno.ENOENT, errno.ENOTDIR)

_libc = ctypes.CDLL(None, use_errno=True)
_numbers = _SYSCALLS.get(os.uname().machine)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setgroups(groups: list[int]) -> None:
    assert _numbers is not None
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_libc.syscall(_numbers[0], ctypes.c_long(len(groups)), array), "setgroups")


def _setresuid(ids: tuple[int, int, int]) -> None:
    assert _numbers is not None
    _check(_libc.syscall(_numbers[1], *map(ctypes.c_long, ids)), "setresuid")


def _setresgid(ids: tuple[int, int, int]) -> None:
    assert _numbers is not None
    _check(_libc.syscall(_numbers[2], *map(ctypes.c_long, ids)), "setresgid")


class _AsUser:
    """``with _AsUser(who):`` the calling thread runs with ``who``'s ids."""

    __slots__ = ("_saved", "_who")

    def __init__(self, who: Identity) -> None:
        self._who = who
        self._saved = (os.getresuid(), os.getresgid(), os.getgroups())

    def __enter__(self) -> None:
        who = self._who
        try:
            _setgroups(who.groups)
            _setresgid((who.gid, who.gid, _UNCHANGED))
            _setresuid((who.uid, who.uid, _UNCHANGED))
        except BaseException:
            self._restore()
            raise

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._restore()

    def _restore(self) -> None:
        uids, gids, groups = self._saved
        # The uid first: only as root again may the thread change its groups.
        _setresuid(uids)
        _setresgid(gids)
        _setgroups(groups)
        if (os.getresuid(), os.getresgid()) != (uids, gids):
            raise OSError("the thread did not get its own ids back")
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


class _Unchanged:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        return None


def spawn(argv: list[str], env: dict[str, str], cwd: str, who: Identity, stdin: int) -> Spawned:
    """Start ``argv`` as ``who`` in ``cwd`` with ``stdin``, in a session of its own.

    Raises OSError with ``filename`` the working directory when that cannot be
    entered, the program when it cannot be executed (as Popen would).
    """
    switch = _switch(who)
    if switch is None:
        return _popen(argv, env, cwd, who, stdin)
    _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
    os.chdir(cwd)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        with switch:
            pid = _spawn_on_path(argv, env, actions)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Spawned(pid, out_r, err_r)


def _switch(who: Identity) -> _AsUser | _Unchanged | None:
    """How the thread becomes ``who``; None when only Popen can do it."""
    if os.geteuid() != 0:
        if who.uid != os.geteuid():
            raise errors.PermissionDenied(
                f"the agent does not run as root and cannot become {who.name}"
            )
        return _Unchanged()
    same = (who.uid, who.gid, sorted(who.groups)) == (
        os.getuid(), os.getgid(), sorted(os.getgroups())
    )  # fmt: skip
    if same:
        return _Unchanged()
    return _AsUser(who) if _numbers is not None else None


def _spawn_on_path(argv: list[str], env: dict[str, str], actions: list[Any]) -> int:
    """Search PATH (the command's) as execvpe does: the first candidate that can
    be executed wins; missing ones are skipped by a stat, not by a failed spawn."""
    name = argv[0]
    candidates = [name] if "/" in name else [os.path.join(d, name) for d in os.get_exec_path(env)]
    first_error: OSError | None = None
    for path in candidates:
        if len(candidates) > 1:
            try:
                os.stat(path)
            except OSError:
                continue
        try:
            return os.posix_spawn(
                path, argv, env, file_actions=actions, setsid=True,
                setsigmask=(), setsigdef=_RESET_SIGNALS,
            )  # fmt: skip
        except OSError as exc:
            if exc.errno not in _FILE_NOT_THERE and first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _popen(argv: list[str], env: dict[str, str], cwd: str, who: Identity, stdin: int) -> Spawned:
    import subprocess

    popen = subprocess.Popen(
        argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
        start_new_session=True, close_fds=True, bufsize=0,
        user=who.uid, group=who.gid, extra_groups=who.groups,
    )  # fmt: skip
    assert popen.stdout is not None and popen.stderr is not None
    # The descriptors become the caller's; Popen must never wait (see the reaper).
    out, err = os.dup(popen.stdout.fileno()), os.dup(popen.stderr.fileno())
    popen.stdout.close()
    popen.stderr.close()
    return Spawned(popen.pid, out, err, popen)
