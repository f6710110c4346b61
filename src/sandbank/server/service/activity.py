"""A sandbox channel that counts as activity for the idle timeout while it works.

Every operation inside a sandbox (exec, files, processes, their streams) gets
its channel from ``SandboxService``, which hands out this wrapper: each call
touches the sandbox when it starts and when it ends, streams touch on every
chunk, and while any call is under way the sandbox is busy, so a long exec or
a followed output stream is never cut by the idle sweep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from sandbank.runtime.base import (
    ExecResult,
    ExecSpec,
    FileEntry,
    JobInfo,
    JobSpec,
    OutputEvent,
    SandboxChannel,
)
from sandbank.runtime.filetree import FileTreeChannel, SizedStream, WatchEvent
from sandbank.server.service.idle import IdleTracker

T = TypeVar("T")


class ActiveChannel:
    def __init__(self, inner: SandboxChannel, tracker: IdleTracker, sandbox_id: str) -> None:
        self._inner = inner
        self._tracker = tracker
        self._id = sandbox_id

    async def _call(self, work: Awaitable[T]) -> T:
        with self._tracker.busy(self._id):
            return await work

    async def _stream(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        with self._tracker.busy(self._id):
            async for item in items:
                self._tracker.touch(self._id)
                yield item

    async def exec(self, spec: ExecSpec) -> ExecResult:
        return await self._call(self._inner.exec(spec))

    def read_file(self, path: str) -> AsyncIterator[bytes]:
        inner = self._inner.read_file(path)
        return SizedStream(self._stream(inner), source=inner)  # keeps a known length

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        mode: int | None = None,
    ) -> FileEntry:
        return await self._call(
            self._inner.write_file(path, self._stream(chunks), user=user, mode=mode)
        )

    async def list_dir(self, path: str, depth: int = 1) -> list[FileEntry]:
        return await self._call(self._inner.list_dir(path, depth))

    async def stat(self, path: str) -> FileEntry:
        return await self._call(self._inner.stat(path))

    async def move(self, src: str, dst: str, *, user: str = "user") -> FileEntry:
        return await self._call(self._inner.move(src, dst, user=user))

    async def make_dir(self, path: str, *, user: str = "user") -> tuple[bool, FileEntry]:
        return await self._call(self._inner.make_dir(path, user=user))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call(self._inner.remove(path, recursive=recursive))

    async def start(self, spec: JobSpec) -> JobInfo:
        return await self._call(self._inner.start(spec))

    async def jobs(self) -> list[JobInfo]:
        return await self._call(self._inner.jobs())

    def attach(self, pid: int, offset: int = 0, follow: bool = True) -> AsyncIterator[OutputEvent]:
        return self._stream(self._inner.attach(pid, offset, follow))

    async def wait(self, pid: int, timeout: float | None = None) -> JobInfo:
        return await self._call(self._inner.wait(pid, timeout))

    async def send_stdin(self, pid: int, data: bytes, close: bool = False) -> None:
        await self._call(self._inner.send_stdin(pid, data, close))

    async def signal(self, pid: int, sig: int | str) -> None:
        await self._call(self._inner.signal(pid, sig))

    def run(self, spec: JobSpec) -> AsyncIterator[OutputEvent]:
        return self._stream(self._inner.run(spec))

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        await self._call(self._inner.resize(pid, cols, rows))


class ActiveTreeChannel(ActiveChannel):
    """``ActiveChannel`` for a runtime whose channels also move whole trees.
    A watch counts once, when it starts: an open watch alone does not keep a
    sandbox from going idle."""

    def __init__(self, inner: FileTreeChannel, tracker: IdleTracker, sandbox_id: str) -> None:
        super().__init__(inner, tracker, sandbox_id)  # type: ignore[arg-type]
        self._tree = inner

    def read_text(self, path: str, encoding: str) -> AsyncIterator[bytes]:
        return self._stream(self._tree.read_text(path, encoding))

    def read_tar(self, path: str) -> AsyncIterator[bytes]:
        return self._stream(self._tree.read_tar(path))

    async def write_tar(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        user: str = "user",
        overwrite: bool = False,
    ) -> FileEntry:
        return await self._call(
            self._tree.write_tar(path, self._stream(chunks), user=user, overwrite=overwrite)
        )

    async def write_files(
        self, chunks: AsyncIterator[bytes], *, user: str = "user"
    ) -> list[FileEntry]:
        return await self._call(self._tree.write_files(self._stream(chunks), user=user))

    async def chmod(self, path: str, mode: int, *, user: str = "user") -> FileEntry:
        return await self._call(self._tree.chmod(path, mode, user=user))

    async def chown(
        self,
        path: str,
        owner: str | int | None,
        group: str | int | None,
        *,
        recursive: bool = False,
        user: str = "user",
    ) -> FileEntry:
        return await self._call(
            self._tree.chown(path, owner, group, recursive=recursive, user=user)
        )

    async def find(
        self, path: str, pattern: str, *, limit: int, user: str = "user"
    ) -> list[FileEntry]:
        return await self._call(self._tree.find(path, pattern, limit=limit, user=user))

    def watch(
        self, path: str, *, recursive: bool = False, user: str = "user"
    ) -> AsyncIterator[WatchEvent]:
        self._tracker.touch(self._id)
        return self._tree.watch(path, recursive=recursive, user=user)
