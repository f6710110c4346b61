"""The host-side half of a create: the sandbox's root file system and the
socket its agent will serve on, ready before the OCI runtime starts anything.

Plain system calls (about a millisecond in all); the driver runs ``assemble``
on a worker thread so that a slow mount (the kernel may wait for an RCU grace
period) never stalls the server's event loop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from sandbank.runtime.linux import disk, fsflags, oci, overlay
from sandbank.runtime.linux.layout import SandboxDir


def assemble(
    box: SandboxDir, lower: list[Path], hostname: str, mark: Callable[[str], None]
) -> None:
    """Mount the disk image and the overlay on it (``lower``: the template's trees,
    topmost first); write the sandbox's name."""
    box.disk.mkdir()
    disk.mount_image(box.image, box.disk)
    mark("mount disk")
    upper, work = overlay.prepare_upper(box.disk, oci.ID_SHIFT)
    box.rootfs.mkdir()
    overlay.mount_overlay(lower, upper, work, box.rootfs)
    mark("mount overlay")
    overlay.write_identity(box.rootfs, hostname, oci.ID_SHIFT)


def listen(box: SandboxDir) -> socket.socket:
    """The agent's listening socket at ``box.socket``, in a run dir that is sealed
    before the sandbox exists.

    The agent inherits the socket instead of binding it, so no process of the
    sandbox ever has a chance to put something else at that path, and the server
    can connect as soon as the OCI runtime returns (the connection waits in the
    backlog until the agent accepts it). The socket belongs to host root with
    mode 0600: nothing inside a sandbox can connect to it.
    """
    # Private while the socket is bound: no one can reach it before the chmod.
    box.run.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(box.socket))
        os.chmod(box.socket, 0o600)
        sock.listen(128)
        # Searchable again, for `test -S /run/sandbank/agent.sock` and friends inside.
        os.chmod(box.run, 0o755)
        fsflags.seal(box.run)
    except BaseException:
        sock.close()
        raise
    return sock
