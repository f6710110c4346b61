"""A template from a local OCI image archive: ``docker save`` or an OCI layout tar.

skopeo turns either archive into an OCI layout (no registry is contacted:
both transports read the file), umoci unpacks its layers in order (whiteouts
applied), and the tree gets ownership shifted like the base's.

The sandbox agent is the sandbox's PID 1 and runs on the image's own
``python3`` (stdlib only): an image without one is refused. A ``user``
account (uid 1000) is added when the image has none, since commands run as
``user`` unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tarfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbank.errors import SandbankError, ValidationFailed
from sandbank.runtime import _proc
from sandbank.runtime.linux.oci import ID_RANGE, ID_SHIFT
from sandbank.runtime.templates.shift import shift_tree

Progress = Callable[[str], None]
PYTHONS = ("usr/bin/python3", "usr/local/bin/python3", "bin/python3", "opt/python/bin/python3")
TAG = "import"


def transport(archive: Path) -> str:
    """skopeo's transport for the archive: an OCI layout, else a ``docker save`` tar."""
    if not archive.is_file():
        raise ValidationFailed(f"image archive {archive} is not a file on the server", field="path")
    if any(c in str(archive) for c in ":\n"):
        raise ValidationFailed(f"image archive path {archive} may not contain ':'", field="path")
    try:
        with tarfile.open(archive) as tar:
            names = {n.lstrip("./") for n in tar.getnames()}
    except (tarfile.TarError, OSError) as exc:
        raise ValidationFailed(f"{archive} is not a tar archive: {exc}", field="path") from exc
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise ValidationFailed(
        f"{archive} is neither an OCI layout tar (oci-layout, index.json) nor a "
        "`docker save` tar (manifest.json)",
        field="path",
    )


def _blob(layout: Path, digest: str) -> Any:
    algo, _, hexa = digest.partition(":")
    return json.loads((layout / "blobs" / algo / hexa).read_text())


def image_config(layout: Path) -> tuple[str, dict[str, Any]]:
    """(manifest digest, the image config's ``config`` part) of the layout's one image."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = _blob(layout, digest)
    config = _blob(layout, manifest["config"]["digest"]).get("config") or {}
    return str(digest), config


def _resolve(rootfs: Path, rel: str) -> Path | None:
    """``rel`` inside ``rootfs`` with symlinks followed as the sandbox would see them."""
    current, parts, hops = rootfs, deque(rel.split("/")), 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent if current != rootfs else rootfs
            continue
        nxt = current / part
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = rootfs
            parts.extendleft(reversed(target.split("/")))
        elif nxt.exists():
            current = nxt
        else:
            return None
    return current


def prepare_tree(rootfs: Path) -> None:
    """Make an unpacked image bootable by the agent; raises ValidationFailed if it cannot be."""
    found = next((p for p in PYTHONS if (hit := _resolve(rootfs, p)) and hit.is_file()), None)
    if found is None:
        raise ValidationFailed(
            "the image has no python3 (looked for /" + ", /".join(PYTHONS) + "): the "
            "sandbox agent runs on the image's own python3; use an image that has one",
            field="path",
        )
    usr_bin = rootfs / "usr/bin"
    usr_bin.mkdir(parents=True, exist_ok=True)
    if found != "usr/bin/python3":
        os.symlink(f"/{found}", usr_bin / "python3")
    for rel, mode in (("opt/sandbank/lib", 0o755), ("run/sandbank", 0o755), ("tmp", 0o1777),
                      ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("etc", 0o755)):  # fmt: skip
        path = rootfs / rel
        if not path.exists() and not path.is_symlink():
            path.mkdir(parents=True)
            os.chmod(path, mode)
    passwd, group = rootfs / "etc/passwd", rootfs / "etc/group"
    users = passwd.read_text() if passwd.is_file() else "root:x:0:0:root:/root:/bin/sh\n"
    if not any(line.startswith("user:") for line in users.splitlines()):
        shell = "/bin/bash" if _resolve(rootfs, "bin/bash") else "/bin/sh"
        passwd.write_text(users.rstrip("\n") + f"\nuser:x:1000:1000::/home/user:{shell}\n")
        groups = group.read_text() if group.is_file() else "root:x:0:\n"
        if not any(line.startswith("user:") for line in groups.splitlines()):
            group.write_text(groups.rstrip("\n") + "\nuser:x:1000:\n")
        home = rootfs / "home/user"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, 1000, 1000)


async def unpack(archive: Path, work: Path, rootfs: Path, progress: Progress) -> dict[str, Any]:
    """Unpack ``archive`` to ``rootfs`` (shifted); returns what ``meta.json`` records."""
    kind = transport(archive)
    layout = work / "image"
    progress(f"reading {kind} {archive}")
    try:
        await _proc.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", f"{kind}:{archive}",
             f"oci:{layout}:{TAG}"],
            timeout=1800, new_session=True,
        )  # fmt: skip
        progress("unpacking layers")
        await _proc.run(
            ["umoci", "raw", "unpack", "--image", f"{layout}:{TAG}", str(rootfs)],
            timeout=1800, new_session=True,
        )  # fmt: skip
    except SandbankError as exc:
        raise ValidationFailed(f"the image in {archive} could not be unpacked: {exc.message}",
                               field="path") from exc  # fmt: skip
    digest, config = image_config(layout)
    await asyncio.to_thread(shutil.rmtree, layout)
    await asyncio.to_thread(prepare_tree, rootfs)
    progress(f"shifting ownership by {ID_SHIFT}")
    try:
        await asyncio.to_thread(shift_tree, rootfs, ID_SHIFT, ID_RANGE)
    except ValueError as exc:
        raise ValidationFailed(f"the image cannot run in a sandbox: {exc}", field="path") from exc
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return {
        "digest": hashlib.sha256(f"image:{digest}".encode()).hexdigest(),
        "image_digest": digest,
        "config": {
            "env": env,
            "workdir": config.get("WorkingDir") or None,
            "user": config.get("User") or None,
            "cmd": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
        },
    }
