"""A sandbox's own overlay layer, copied out as a template layer.

The overlay's upper dir holds exactly what a sandbox changed over its
template, in overlayfs's own format: whiteouts (0/0 character devices) for
deleted files and ``trusted.overlay.opaque`` on replaced directories. The
kernel honours both in any lower layer, so the copy is stacked as it is over
the template's trees: a sandbox of the new template mounts
``lowerdir=layer:base`` and costs what a sandbox of the base costs. Owners are
already the sandbox's (shifted) ids.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandbank.runtime import _proc

#: Written into every sandbox at create (its name, its network): never inherited.
PER_SANDBOX = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


async def copy_upper(upper: Path, layer: Path) -> None:
    """Copy ``upper`` (not mounted over while this runs: the sandbox is frozen) to ``layer``."""
    layer.mkdir(parents=True)
    # -a: owners, modes, hard links, device nodes (whiteouts) and xattrs (opaque
    # dirs, file capabilities); the copy is a plain tree nobody writes to again.
    await _proc.run(["cp", "-a", f"{upper}/.", str(layer)], timeout=1800, new_session=True)
    drop_per_sandbox(layer)


def drop_per_sandbox(layer: Path) -> None:
    """Remove from a copied layer the files every sandbox gets its own of."""
    for rel in PER_SANDBOX:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(layer / rel)
