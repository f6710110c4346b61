"""The fake runtime's file trees (``FileTreeChannel``) over its in-memory files.

Enough of the agent's behaviour for service- and API-level tests: tar streams
both ways (all or nothing), batches of files, chmod/chown kept per path,
``find`` with the agent's own glob, and watches. The fake keeps only regular
files and directories (no links, no devices); a watch polls the sandbox's
dicts and reports what changed, so every way of changing them is seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import posixpath
import stat
import tarfile
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sandbank.agent.fileops import compile_glob
from sandbank.errors import (
    BadRequest,
    FileExists,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotText,
    PayloadTooLarge,
)
from sandbank.runtime.base import FileEntry
from sandbank.runtime.filetree import WatchEvent

if TYPE_CHECKING:
    from sandbank.runtime.fake import FakeSandbox

#: The fake's accounts: name -> id (users and groups alike).
ACCOUNTS = {"root": 0, "user": 1000}
#: How often a watch looks for changes.
WATCH_POLL = 0.01
_CHUNK = 64 * 1024


def resolve(path: str, user: str = "user") -> str:
    """``path`` made absolute: relative paths are in the user's home."""
    home = "/root" if user == "root" else "/home/user"
    return posixpath.normpath(posixpath.join(home, path))


def _account(raw: str | int | None, what: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        return next((n for n, i in ACCOUNTS.items() if i == raw), str(raw))
    if raw.isdigit():
        return _account(int(raw), what)
    if raw not in ACCOUNTS:
        raise BadRequest(f"unknown {what} {raw!r}")
    return raw


async def _read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def _tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            out = []
            for member in tar.getmembers():
                reader = tar.extractfile(member) if member.isreg() else None
                out.append((member, reader.read() if reader else None))
            return out
    except (tarfile.TarError, EOFError) as exc:
        raise BadRequest(f"the upload is not a tar archive: {exc}") from None


class FakeFileTree:
    """Mixed into FakeChannel: ``_box`` is the fake sandbox it works on."""

    _box: FakeSandbox

    # -- per-path modes and owners -------------------------------------------------

    def _meta(self) -> dict[str, tuple[int, str, str]]:
        meta: dict[str, tuple[int, str, str]] = self._box.__dict__.setdefault("_fake_meta", {})
        return meta

    def _with_meta(self, entry: FileEntry) -> FileEntry:
        """``entry`` with the mode and owners chmod/chown/writes gave its path."""
        found = self._meta().get(entry.path)
        if found is None:
            return entry
        mode, owner, group = found
        kind = stat.S_IFDIR if entry.type == "dir" else stat.S_IFREG
        return dataclasses.replace(
            entry, mode=mode, permissions=stat.filemode(kind | mode)[1:], owner=owner, group=group
        )

    def _tree_entry(self, path: str) -> FileEntry:
        box = self._box
        if path not in box.dirs and path not in box.files:
            raise FileNotFound(f"{path} does not exist")
        is_dir = path in box.dirs
        entry = FileEntry(
            name=posixpath.basename(path) or "/", path=path, type="dir" if is_dir else "file",
            size=0 if is_dir else len(box.files[path]), mode=0o755 if is_dir else 0o644,
            permissions="rwxr-xr-x" if is_dir else "rw-r--r--", owner="user", group="user",
            modified_at=time.time(),
        )  # fmt: skip
        return self._with_meta(entry)

    def _dir(self, path: str) -> str:
        if path in self._box.files:
            raise NotADirectory(f"{path} is not a directory")
        if path not in self._box.dirs:
            raise FileNotFound(f"{path} does not exist")
        return path

    def _under(self, top: str) -> list[str]:
        """Every path below the directory ``top`` (not itself), sorted."""
        prefix = top.rstrip("/") + "/"
        return sorted(p for p in self._box.files.keys() | self._box.dirs if p.startswith(prefix))

    def _make_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent not in self._box.dirs:
            if parent in self._box.files:
                raise NotADirectory(f"{parent} is not a directory")
            self._box.dirs.add(parent)
            parent = posixpath.dirname(parent)

    # -- reading -------------------------------------------------------------------

    async def read_text(self, path: str, encoding: str) -> AsyncIterator[bytes]:
        full = resolve(path)
        if full in self._box.dirs:
            raise IsADirectory(f"{full} is a directory")
        if full not in self._box.files:
            raise FileNotFound(f"{full} does not exist")
        data = self._box.files[full]
        try:
            data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise NotText(f"{full} is not {encoding} text (byte {exc.start})") from None
        yield data

    async def read_tar(self, path: str) -> AsyncIterator[bytes]:
        top = self._dir(resolve(path))
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for full in self._under(top):
                entry = self._tree_entry(full)
                info = tarfile.TarInfo(posixpath.relpath(full, top))
                info.mode, info.uname, info.gname = entry.mode, entry.owner, entry.group
                info.mtime = int(entry.modified_at)
                if entry.type == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    data = self._box.files[full]
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        body = out.getvalue()
        for start in range(0, len(body), _CHUNK):
            yield body[start : start + _CHUNK]

    # -- writing -------------------------------------------------------------------

    async def write_tar(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        overwrite: bool = False,
    ) -> FileEntry:
        target = resolve(path, user)
        if target == "/":
            raise InvalidPath("cannot unpack onto /")
        if target in self._box.files:
            raise FileExists(f"{target} exists and is not a directory")
        if target in self._box.dirs and not overwrite:
            raise FileExists(f"{target} already exists; pass overwrite=true to replace it")
        files: dict[str, bytes] = {}
        dirs = {target}
        meta: dict[str, tuple[int, str, str]] = {}
        for member, data in _tar_members(await _read_all(chunks)):
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            rel = posixpath.normpath(name or ".")
            if member.name.startswith("/") or rel == ".." or rel.startswith("../"):
                raise InvalidPath(f"{member.name!r} would be written outside the target")
            full = posixpath.normpath(posixpath.join(target, rel))
            if member.isdir():
                dirs.add(full)
            elif member.isreg() and data is not None:
                files[full] = data
            else:
                raise InvalidPath(f"{member.name!r}: the fake runtime keeps files and dirs only")
            meta[full] = (stat.S_IMODE(member.mode), user, user)
            parent = posixpath.dirname(full)
            while parent != target and parent.startswith(target):
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        if clash := sorted(dirs & files.keys()):
            raise InvalidPath(f"{clash[0]!r} is both a file and a directory")
        # All checked: now the swap, nothing of a failed upload is left.
        self._make_parents(target)
        for old in self._under(target) if target in self._box.dirs else []:
            self._box.files.pop(old, None)
            self._box.dirs.discard(old)
        self._box.dirs |= dirs
        self._box.files.update(files)
        self._meta().update(meta)
        return self._tree_entry(target)

    async def write_files(
        self, chunks: AsyncIterator[bytes], *, user: str = "user"
    ) -> list[FileEntry]:
        batch: list[tuple[str, bytes, int | None]] = []
        for member, data in _tar_members(await _read_all(chunks)):
            if not member.isreg() or data is None:
                raise BadRequest(f"{member.name}: only regular files can be written")
            full = resolve(member.name, user)
            if full in self._box.dirs:
                raise IsADirectory(f"{member.name}: {full} is a directory")
            raw = member.pax_headers.get("sandbank.mode")
            try:
                mode = None if raw is None else int(raw, 8) & 0o7777
            except ValueError:
                raise BadRequest(f"sandbank.mode {raw!r} is not an octal number") from None
            batch.append((full, data, mode))
        if not batch:
            raise BadRequest("the request names no files to write")
        for full, _, _ in batch:
            parent = posixpath.dirname(full)
            while parent not in self._box.dirs:
                if parent in self._box.files:
                    raise NotADirectory(f"{parent} is not a directory")
                parent = posixpath.dirname(parent)
        for full, data, mode in batch:
            self._make_parents(full)
            self._box.files[full] = data
            old = self._meta().get(full)
            if mode is not None or old is None:
                owner = (old[1], old[2]) if old else (user, user)
                self._meta()[full] = (0o644 if mode is None else mode, *owner)
        return [self._tree_entry(full) for full, _, _ in batch]

    async def chmod(self, path: str, mode: int, *, user: str = "user") -> FileEntry:
        entry = self._tree_entry(resolve(path, user))
        self._meta()[entry.path] = (mode & 0o7777, entry.owner, entry.group)
        return self._tree_entry(entry.path)

    async def chown(
        self,
        path: str,
        owner: str | int | None,
        group: str | int | None,
        *,
        recursive: bool = False,
        user: str = "user",
    ) -> FileEntry:
        if owner is None and group is None:
            raise BadRequest("name an owner, a group or both")
        new_owner, new_group = _account(owner, "user"), _account(group, "group")
        top = self._tree_entry(resolve(path, user))
        paths = [top.path] + (self._under(top.path) if recursive and top.type == "dir" else [])
        for full in paths:
            entry = self._tree_entry(full)
            self._meta()[full] = (entry.mode, new_owner or entry.owner, new_group or entry.group)
        return self._tree_entry(top.path)

    async def find(
        self, path: str, pattern: str, *, limit: int, user: str = "user"
    ) -> list[FileEntry]:
        if not pattern or pattern.startswith("/"):
            raise BadRequest("pattern must be a non-empty glob relative to path")
        top = self._dir(resolve(path, user))
        regex = compile_glob(pattern)
        found = [p for p in self._under(top) if regex.fullmatch(posixpath.relpath(p, top))]
        if len(found) > limit:
            raise PayloadTooLarge(
                f"more than {limit} paths under {top} match {pattern!r}; "
                "narrow the pattern or raise the limit"
            )
        return [self._tree_entry(p) for p in found]

    # -- watching ------------------------------------------------------------------

    def _state(self, top: str, recursive: bool) -> dict[str, tuple[bool, str, object]]:
        """path -> (is_dir, content digest, mode/owners) of what a watch of ``top`` sees."""
        seen: dict[str, tuple[bool, str, object]] = {}
        for full in self._under(top):
            rel = posixpath.relpath(full, top)
            if not recursive and "/" in rel:
                continue
            data = self._box.files.get(full)
            digest = "" if data is None else hashlib.sha256(data).hexdigest()
            seen[rel] = (data is None, digest, self._meta().get(full))
        return seen

    async def watch(
        self, path: str, *, recursive: bool = False, user: str = "user"
    ) -> AsyncIterator[WatchEvent]:
        top = self._dir(resolve(path, user))
        before = self._state(top, recursive)
        # How many watches are set up on the sandbox: a test waits for its own.
        self._box.__dict__["watches"] = self._box.__dict__.get("watches", 0) + 1
        try:
            yield WatchEvent(kind="start", name=top)
            async for event in self._changes(top, recursive, before):
                yield event
        finally:
            self._box.__dict__["watches"] -= 1

    async def _changes(
        self, top: str, recursive: bool, before: dict[str, tuple[bool, str, object]]
    ) -> AsyncIterator[WatchEvent]:
        while True:
            await asyncio.sleep(WATCH_POLL)
            # Looks taken so far: a test waits for one after a change, not a guessed time.
            self._box.__dict__["watch_polls"] = self._box.__dict__.get("watch_polls", 0) + 1
            if top not in self._box.dirs:
                yield WatchEvent(kind="end", reason=f"{top} was removed")
                return
            now = self._state(top, recursive)
            for rel in sorted(before.keys() - now.keys()):
                yield WatchEvent(kind="fs", type="remove", name=rel, is_dir=before[rel][0])
            for rel in sorted(now):
                is_dir, digest, meta = now[rel]
                old = before.get(rel)
                if old is None:
                    yield WatchEvent(kind="fs", type="create", name=rel, is_dir=is_dir)
                    if not is_dir and self._box.files[posixpath.join(top, rel)]:
                        yield WatchEvent(kind="fs", type="write", name=rel)
                elif old[1] != digest:
                    yield WatchEvent(kind="fs", type="write", name=rel, is_dir=is_dir)
                elif old[2] != meta:
                    yield WatchEvent(kind="fs", type="chmod", name=rel, is_dir=is_dir)
            before = now
