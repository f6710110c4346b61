"""Reading a sandbox's file from the host, without the agent in the data path.

A download through the agent costs every byte a trip through the agent's
socket and a frame decode in the server: about as much CPU again as the HTTP
side. For the common case (a regular file on the sandbox's own root
filesystem) the server opens it itself and streams it with large reads.

Containment is the kernel's, not ours: the file is opened with openat2(2)
relative to the agent's root (``/proc/<agent pid>/root``, the sandbox's ``/``
in its own mount namespace) with

* ``RESOLVE_IN_ROOT``: ``..`` and absolute symlinks stop at the sandbox's ``/``,
  exactly as they do for the agent;
* ``RESOLVE_NO_MAGICLINKS``: no ``/proc/*/fd`` or ``/proc/*/root`` jumps;
* ``RESOLVE_NO_XDEV``: the walk never leaves the root filesystem, so nothing
  mounted inside the sandbox (``/proc``, ``/dev``, tmpfs, volumes) is read
  from here.

Permissions: the agent reads as root of the sandbox's user namespace, which may
read any file whose owner and group are mapped into it. Every inode of the
sandbox's root filesystem is (the template is stored shifted, and the sandbox
can only hand out mapped ids), and the opened file's ids are checked again; a
file with an unmapped owner goes through the agent, which then answers as it
always did. Anything else this path does not take (a relative path, a
directory, a FIFO, a walk that crosses a mount, a symlink into ``/proc``, an
agent that does not answer) also falls back to the agent, so the answer and the
errors stay the agent's.

The agent's pid is the container's init from the OCI runtime's state; its
start time is checked again once its root is open, and that root must hold the
very socket this channel talks to, so a recycled pid can never lend its root.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sandbank.errors import SandboxUnavailable
from sandbank.protocol.agent import SOCKET_DIR
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.filetree import SizedStream
from sandbank.runtime.linux.kernel import process_start
from sandbank.runtime.linux.oci import ID_RANGE, ID_SHIFT

#: The container's init (the agent) as (host pid, start time), or None when it is not running.
InitProcess = Callable[[], Awaitable[tuple[int, int] | None]]

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the unification)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
#: Bytes per read of a file served from the host.
HOST_CHUNK = 1024 * 1024


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2); raises OSError like ``os.open``."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _mapped(st: os.stat_result, id_shift: int, id_range: int) -> bool:
    return id_shift <= st.st_uid < id_shift + id_range and (
        id_shift <= st.st_gid < id_shift + id_range
    )


def open_for_read(
    agent: tuple[int, int], socket_path: Path, path: str, id_shift: int, id_range: int
) -> int | None:
    """A read-only descriptor of the regular file ``path`` inside the sandbox
    whose agent is ``agent`` (pid, start time) and listens on ``socket_path``,
    or None when the agent must serve this read (see the module docstring).
    Blocking: run it in a thread."""
    if not path.startswith("/") or "\0" in path:
        return None
    # The agent normalises lexically (``a/../b`` is ``b``) before opening: so do we.
    inner = os.path.normpath(path).lstrip("/") or "."
    pid, started = agent
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if process_start(pid) != started or not _holds_socket(root, socket_path):
            return None
        try:
            handle = openat2(root, inner, os.O_PATH, _RESOLVE)
        except OSError:
            return None
        try:
            st = os.fstat(handle)
            if not stat.S_ISREG(st.st_mode) or not _mapped(st, id_shift, id_range):
                return None
            # Reopening our own O_PATH descriptor reads the same inode: no second
            # walk, and nothing but a regular file is ever opened for reading.
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            os.close(handle)
    finally:
        os.close(root)


def _holds_socket(root: int, socket_path: Path) -> bool:
    """Whether ``root`` is the root of the sandbox whose agent socket is ``socket_path``."""
    inside = f"{SOCKET_DIR.lstrip('/')}/{socket_path.name}"
    try:
        fd = openat2(root, inside, os.O_PATH, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    except OSError:
        return False
    try:
        there, here = os.fstat(fd), os.stat(socket_path)
    except OSError:
        return False
    finally:
        os.close(fd)
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


class _HostFile:
    """A file being streamed from the host; ``fd`` is -1 once ``retire`` closed it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


#: Per agent socket: the files being read from the host (event-loop thread only).
_reading: dict[Path, set[_HostFile]] = {}
#: Per agent socket: the (device, inode) of a socket whose sandbox is going away.
_retired: dict[Path, tuple[int, int]] = {}


def retire(socket_path: Path) -> None:
    """Before a sandbox's filesystems are unmounted: close the files being read
    from the host (those downloads are cut, as they would be through the agent)
    and refuse new host reads until the agent's socket is made anew (a restart).
    An open file would keep the sandbox's disk busy, and a stalled client
    would keep it so for ever."""
    for gone in [p for p in _retired if not p.exists()]:
        del _retired[gone]
    try:
        st = os.stat(socket_path)
        _retired[socket_path] = (st.st_dev, st.st_ino)
    except OSError:
        pass
    for held in _reading.pop(socket_path, set()):
        if held.fd >= 0:
            os.close(held.fd)
            held.fd = -1


def _is_retired(socket_path: Path) -> bool:
    mark = _retired.get(socket_path)
    if mark is None:
        return False
    try:
        st = os.stat(socket_path)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) == mark


class HostReadAgentClient(AgentClient):
    """The agent's channel, with plain reads of regular files on the sandbox's
    root filesystem served from the host (see the module docstring)."""

    def __init__(self, socket_path: Path, init_process: InitProcess) -> None:
        super().__init__(socket_path)
        self._init_process = init_process

    def read_file(self, path: str) -> AsyncIterator[bytes]:
        stream = SizedStream()
        stream.chunks = self._read(path, stream)
        return stream

    async def _open_host(self, path: str) -> int | None:
        if _is_retired(self.socket_path):
            return None
        agent = await self._init_process()
        if agent is None:
            return None
        fd = await asyncio.to_thread(
            open_for_read, agent, self.socket_path, path, ID_SHIFT, ID_RANGE
        )
        if fd is not None and _is_retired(self.socket_path):  # retired meanwhile
            os.close(fd)
            return None
        return fd

    async def _read(self, path: str, stream: SizedStream) -> AsyncIterator[bytes]:
        fd = await self._open_host(path)
        if fd is None:
            async for chunk in super().read_file(path):
                yield chunk
            return
        held = _HostFile(fd)
        _reading.setdefault(self.socket_path, set()).add(held)
        try:
            # The length is stated up front (no chunked encoding, whose framing
            # costs the HTTP server a copy of every chunk): a file that grows
            # meanwhile is sent as long as it was, one that shrinks cuts the stream.
            left = stream.known = os.fstat(fd).st_size
            # Read on the event loop's thread: a page-cache read of HOST_CHUNK
            # takes ~0.1 ms, and ``retire`` may then close the descriptor
            # between two reads without racing a worker thread that uses it.
            while left:
                if held.fd < 0:
                    raise SandboxUnavailable("the sandbox went away during the download")
                chunk = os.read(held.fd, min(left, HOST_CHUNK))
                if not chunk:
                    raise SandboxUnavailable(f"{path} shrank during the download")
                left -= len(chunk)
                yield chunk
        finally:
            if held.fd >= 0:
                os.close(held.fd)
                held.fd = -1
            readers = _reading.get(self.socket_path)
            if readers is not None:
                readers.discard(held)
                if not readers:
                    del _reading[self.socket_path]
