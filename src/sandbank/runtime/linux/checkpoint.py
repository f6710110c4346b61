"""Checkpoint and restore of whole sandboxes with CRIU (through ``runc checkpoint/restore``).

A checkpoint is a directory of CRIU images plus ``meta.json`` (and, for one
taken with the sandbox left running, a copy of its disk image). It lives in
the sandbox's own directory, so teardown removes it with the sandbox.

What has to be arranged around CRIU, and why:

* The agent's listening socket (and every connection to it) was made on the
  host, in the host's network namespace, which the checkpoint cannot hold.
  The agent ``park``s first (agent/parking.py): the socket is swapped for a
  pipe; afterwards (restored, or left running) a new listening socket is
  handed over to it (``hand_over``). A checkpoint therefore fails while
  another operation holds a connection to the agent (a streamed exec, an
  attach): the sandbox then keeps running, unchanged.
* The agent's stdout/stderr is agent.log on the host, outside the sandbox's
  mounts: declared external at dump, and the new sandbox's log is put in its
  place at restore (``inherit-fd``, through runc's own stdout).
* The network namespace is saved and restored empty (``NET_EMPTY``) and gets
  a fresh link (``network.attach``), so a restored sandbox gets an address of
  its own.
* The image directory is readable by the sandbox's root group: CRIU restores
  the time namespace from inside the new user namespace.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandbank.errors import BadRequest, CheckpointFailed, RuntimeFailure, SandboxUnavailable
from sandbank.protocol.agent import HANDOFF_NAME
from sandbank.runtime import _proc
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.linux import criu, fsflags, oci, phases
from sandbank.runtime.linux.cgroups import Cgroup
from sandbank.runtime.linux.layout import SandboxDir
from sandbank.runtime.linux.ocicli import OciCli

META = "meta.json"
#: In the sandbox dir while its agent is parked: the wake-up descriptor, so that
#: a server restarted after a crash mid-checkpoint can give the agent a socket.
PARKED = "parked.json"
DISK_COPY = "disk.img"
HANDOVER_SECONDS = 10.0
#: The network namespace is saved and restored empty (no link, address, route,
#: rule, sysctl or conntrack entry): a restored sandbox gets a fresh link and
#: address anyway (``network.attach``, which also brings ``lo`` up and turns
#: IPv6 off again), and the patched criu then skips two walks of the host's
#: conntrack table (~10 ms each) per dump.
NET_EMPTY = ("--empty-ns", "network")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Meta:
    """What a restore needs besides the images."""

    source: str
    #: The agent's log as CRIU names it in the images.
    log_key: str
    #: The descriptor of the parked agent's wake-up pipe.
    wake_fd: int
    #: Whether the images come with a copy of the disk (``leave_running``).
    with_disk: bool
    taken_at: float

    def save(self, images: Path) -> None:
        (images / META).write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, images: Path) -> Meta:
        try:
            data = json.loads((images / META).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeFailure(f"no usable checkpoint at {images}: {exc}") from exc


def images_dir(box: SandboxDir, leave_running: bool) -> Path:
    """Hibernation images have a fixed place; each fork gets its own."""
    if not leave_running:
        return box.root / "hibernated"
    return box.root / f"fork-{secrets.token_hex(4)}"


def make_images_dir(path: Path) -> None:
    """Readable by host root and by the sandbox's root group only. CRIU's restore
    reads some images (the time namespace's) from inside the new user
    namespace, before or after its ids are mapped: as host uid 0 without
    capabilities (the owner), or as the sandbox's root (the group)."""
    path.mkdir(mode=0o750)
    os.chown(path, 0, oci.ID_SHIFT)


async def _wait_no_sockets(pid: int, timeout: float = 2.0) -> None:
    """Until the agent has closed the connection that asked it to park."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        if not any(link.startswith("socket:") for link in links):
            return
        await asyncio.sleep(0.005)


def _criu_errors(log: Path, limit: int = 5) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.split(": ", 1)[-1] for ln in lines if "Error" in ln and "rlimit" not in ln]
    return "; ".join(errors[:limit])


#: CRIU's words for states a checkpoint cannot save, and what they mean here.
_HINTS = {
    "Unix socket": "an operation is still connected to the sandbox (a streamed exec or an "
    "attached output stream); try again once it ends",
    "tcp-established": "a process has an established TCP connection, which a checkpoint "
    "does not save; close it (listening sockets are fine)",
    "TCP connection": "a process has an established TCP connection, which a checkpoint "
    "does not save; close it (listening sockets are fine)",
}


def _hint(why: str) -> str:
    return "".join(f" ({text})" for key, text in _HINTS.items() if key in why)[:400]


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def copy_sparse(src: Path, dest: Path) -> None:
    """Copy a disk image's data extents only (a fresh image is mostly holes);
    in-process, as a ``cp`` would cost a process start on the fork's path."""
    await asyncio.to_thread(_copy_extents, src, dest)


def _copy_extents(src: Path, dest: Path) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd_in).st_size
            os.ftruncate(fd_out, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd_in, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                end = os.lseek(fd_in, start, os.SEEK_HOLE)
                while start < end:
                    copied = os.copy_file_range(fd_in, fd_out, end - start, start, start)
                    if copied == 0:
                        raise OSError(errno.EIO, f"{src} ended early at {start}")
                    start += copied
                offset = end
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


async def dump(
    ocicli: OciCli,
    criu_binary: str,
    sandbox_id: str,
    box: SandboxDir,
    images: Path,
    cgroup: Cgroup,
    *,
    leave_running: bool,
    mark: Callable[[str], None] = phases.ignore,
    on_disk_copied: Callable[[], None] | None = None,
) -> Meta:
    """Park the agent and checkpoint the container into ``images``; with
    ``leave_running``, a copy of the disk image goes with them. On failure the
    sandbox is as it was (running, agent serving); the caller removes ``images``.

    The sandbox is frozen here (the cgroup freezer, polled every 0.5 ms), not
    by criu (which polls every 100 ms): criu finds it frozen and leaves it so,
    and the disk copy and the memory are of the same instant.
    ``on_disk_copied`` is called once the disk copy is made, as criu starts
    (fork copies are prepared from it meanwhile).
    """
    agent = await ocicli.init_process(sandbox_id)
    if agent is None:
        raise SandboxUnavailable(f"sandbox {sandbox_id} is not running")
    pid, _start = agent
    log_key = criu.file_key(pid, 1)
    try:
        parked = await AgentClient(box.socket).park()
    except BadRequest as exc:
        raise CheckpointFailed(
            f"the agent of sandbox {sandbox_id} was started by an older server and cannot "
            f"let go of its socket for a checkpoint: {exc.message}"
        ) from exc
    wake_fd = int(parked["wake_fd"])
    mark_parked(box, wake_fd)
    meta = Meta(sandbox_id, log_key, wake_fd, leave_running, time.time())
    mark("park")
    dumped = False
    try:
        await _wait_no_sockets(pid)
        mark("parked wait")
        if not await cgroup.freeze_wait():
            raise CheckpointFailed(f"sandbox {sandbox_id} did not freeze for its checkpoint")
        mark("freeze")
        if leave_running:
            await asyncio.to_thread(_syncfs, box.disk)
            mark("syncfs")
            await copy_sparse(box.image, images / DISK_COPY)
            mark("disk copy")
            if on_disk_copied is not None:
                on_disk_copied()
        options = [f"external {log_key}", "network-lock skip"]
        env = criu.write_config(images / "dump.conf", options)
        argv = [ocicli.binary, "--root", str(ocicli.root), "--criu", criu_binary, "checkpoint"]
        if leave_running:
            argv.append("--leave-running")
        argv += [*NET_EMPTY, "--image-path", str(images), "--work-path", str(images), sandbox_id]
        result = await _proc.run(argv, env=env, timeout=300, check=False)
        if result.returncode != 0:
            why = _criu_errors(images / "dump.log") or _proc.tail(result.stderr or result.stdout)
            why += _hint(why)
            raise CheckpointFailed(
                f"checkpoint of sandbox {sandbox_id} failed, it keeps running: {why}"
            )
        dumped = True
        mark("criu dump")
    finally:
        if leave_running or not dumped:
            # Still there (left running, or the dump failed): thawed, and the
            # agent gets its socket back.
            with contextlib.suppress(OSError):
                cgroup.thaw()
            if await ocicli.init_process(sandbox_id) is not None:
                await hand_over(box, pid, wake_fd)
            mark("thaw, hand over")
    meta.save(images)
    return meta


async def restore(
    ocicli: OciCli,
    criu_binary: str,
    sandbox_id: str,
    box: SandboxDir,
    images: Path,
    meta: Meta,
    mark: Callable[[str], None] = phases.ignore,
) -> tuple[int, int]:
    """``runc restore`` of ``images`` as container ``sandbox_id`` from the bundle
    ``box`` (config, mounted rootfs, sealed run dir); returns its init (pid, start)."""
    work = box.root / f"restore-{secrets.token_hex(3)}"
    work.mkdir(mode=0o700)
    try:
        # runc's stdout becomes criu's descriptor 1, which stands in for the log.
        env = criu.write_config(work / "restore.conf", [f"inherit-fd fd[1]:{meta.log_key}"])
        argv = [
            ocicli.binary, "--root", str(ocicli.root), "--criu", criu_binary, "restore",
            "--detach", *NET_EMPTY, "--image-path", str(images), "--work-path", str(work),
            "--bundle", str(box.root), sandbox_id,
        ]  # fmt: skip
        with open(box.log, "ab") as log:
            # CRIU reopens the inherited log as the sandbox's root; it writes
            # there anyway, and nothing in the sandbox can reach the path.
            os.fchown(log.fileno(), oci.ID_SHIFT, oci.ID_SHIFT)
            result = await _proc.run(
                argv, env=env, timeout=300, check=False, output=log, new_session=True
            )
        if result.returncode != 0:
            why = _criu_errors(work / "restore.log") or box.log_tail(400)
            raise RuntimeFailure(f"restoring sandbox {sandbox_id} failed: {why}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mark("criu restore")
    agent = await ocicli.init_process(sandbox_id)
    if agent is None:
        raise RuntimeFailure(f"sandbox {sandbox_id} stopped right after its restore")
    return agent


def mark_parked(box: SandboxDir, wake_fd: int) -> None:
    (box.root / PARKED).write_text(json.dumps({"wake_fd": wake_fd}))


def parked_fd(box: SandboxDir) -> int | None:
    """The wake-up descriptor of a parked agent, if its sandbox is marked parked."""
    try:
        return int(json.loads((box.root / PARKED).read_text())["wake_fd"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def hand_over(box: SandboxDir, pid: int, wake_fd: int) -> None:
    """Give the parked agent (host pid ``pid``) a new listening socket at
    ``box.socket`` and wait until it has it."""
    handoff_path = box.run / HANDOFF_NAME
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    handoff = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fsflags.unseal(box.run)
    try:
        with contextlib.suppress(FileNotFoundError):
            box.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            handoff_path.unlink()
        listener.bind(str(box.socket))
        os.chmod(box.socket, 0o600)
        listener.listen(128)
        handoff.bind(str(handoff_path))
        # Root inside the sandbox connects; the peer's pid is checked below.
        os.chown(handoff_path, oci.ID_SHIFT, oci.ID_SHIFT)
        handoff.listen(4)
    finally:
        fsflags.seal(box.run)
    try:
        wake = os.open(f"/proc/{pid}/fd/{wake_fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(wake, b"R")
        finally:
            os.close(wake)
        handoff.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(HANDOVER_SECONDS):
            while True:
                conn, _ = await loop.sock_accept(handoff)
                with conn:
                    creds = conn.getsockopt(
                        socket.SOL_SOCKET, socket.SO_PEERCRED, array.array("i").itemsize * 3
                    )
                    peer = array.array("i", creds)[0]
                    if peer != pid:
                        continue
                    conn.setblocking(True)
                    fds = array.array("i", [listener.fileno()])
                    conn.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    break
    except (OSError, TimeoutError) as exc:
        raise RuntimeFailure(f"could not hand the agent its socket back: {exc}") from exc
    finally:
        handoff.close()
        listener.close()
        fsflags.unseal(box.run)
        try:
            with contextlib.suppress(FileNotFoundError):
                handoff_path.unlink()
        finally:
            fsflags.seal(box.run)
    await AgentClient(box.socket).wait_ready(timeout=HANDOVER_SECONDS)
    (box.root / PARKED).unlink(missing_ok=True)
