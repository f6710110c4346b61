"""``sandbank cp``: a file, or with ``-r`` a directory (as a tar stream),
between this machine and a sandbox, streamed.

A sandbox side is written ``ID:/path`` (like scp); ``-`` is stdin or stdout.
Like cp, copying onto an existing directory copies into it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path, PurePosixPath

from sandbank import errors
from sandbank.client import Sandbox

from ._options import ServerOptions

_REMOTE = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_-]{0,63}):(?P<path>.*)$")
STDIO = "-"


def split_location(text: str) -> tuple[str | None, str]:
    """``("sandbox-id", "/path")`` for ``ID:/path``, ``(None, text)`` for a local path."""
    match = _REMOTE.match(text)
    if match is None:
        return None, text
    if not match["path"]:
        raise errors.InvalidPath(f"{text!r} names no path inside the sandbox; write ID:/path")
    return match["id"], match["path"]


def copy(options: ServerOptions, source: str, destination: str, recursive: bool = False) -> None:
    source_id, source_path = split_location(source)
    target_id, target_path = split_location(destination)
    if source_id and target_id:
        raise errors.BadRequest("cp copies between this machine and a sandbox, not two sandboxes")
    if target_id:
        with options.sandbox(target_id) as sandbox:
            _upload(sandbox, source_path, target_path, recursive)
    elif source_id:
        with options.sandbox(source_id) as sandbox:
            _download(sandbox, source_path, target_path, recursive)
    else:
        raise errors.BadRequest("one side of cp must be in a sandbox, written ID:/path")


def _upload(sandbox: Sandbox, local: str, remote: str, recursive: bool) -> None:
    if local == STDIO:
        if remote.endswith("/"):
            raise errors.InvalidPath(f"name the file to write data from stdin to, not {remote!r}")
        sandbox.files.write(remote, sys.stdin.buffer)
        return
    local_path = Path(local)
    if local_path.is_dir():
        if not recursive:
            raise errors.IsADirectory(f"{local} is a directory; copy it with cp -r")
        if _is_remote_dir(sandbox, remote):
            remote = str(PurePosixPath(remote) / local_path.resolve().name)
        sandbox.files.upload_dir(local_path, remote)
        return
    if remote.endswith("/") or _is_remote_dir(sandbox, remote):
        remote = str(PurePosixPath(remote) / local_path.name)
    sandbox.files.upload(local_path, remote)


def _is_remote_dir(sandbox: Sandbox, path: str) -> bool:
    try:
        return sandbox.files.stat(path).is_dir
    except errors.FileNotFound:
        return False


def _download(sandbox: Sandbox, remote: str, local: str, recursive: bool) -> None:
    if local == STDIO:
        out = sys.stdout.buffer
        for chunk in sandbox.files.read_stream(remote):
            out.write(chunk)
        out.flush()
        return
    local_path = Path(local)
    if _is_remote_dir(sandbox, remote):
        if not recursive:
            raise errors.IsADirectory(f"{remote} is a directory; copy it with cp -r")
        if local_path.is_dir():
            local_path = local_path / PurePosixPath(remote.rstrip("/") or "/").name
        sandbox.files.download_dir(remote, local_path)
        return
    if local.endswith("/") or local_path.is_dir():
        local_path = local_path / PurePosixPath(remote).name
    sandbox.files.download(remote, local_path)
