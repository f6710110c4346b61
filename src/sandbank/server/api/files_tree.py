"""/v1/sandboxes/{id}/files/...: directories as tar streams, batches, chmod/chown,
find and watches.

Tar bodies stream straight between the HTTP connection and the agent, both
ways, like single files: a directory of any size never sits in the server's
memory. A watch is an NDJSON stream (``start``, then ``fs`` events, keepalives,
``end`` when the directory goes away); closing it stops the watch.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from sandbank.protocol.api import FileEntryOut, FileList
from sandbank.protocol.api_files import ChmodRequest, ChownRequest
from sandbank.server.api.convert import entry_out
from sandbank.server.api.deps import Caller, SandboxId, Services, Svc
from sandbank.server.service.files import DEFAULT_FIND_LIMIT, FileTreeService, WatchLine

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])

User = Literal["user", "root"]
TAR = "application/x-tar"
NDJSON = "application/x-ndjson"
_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TAR_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "the directory as a tar stream", "content": {TAR: {}}}
}
_TAR_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {TAR: {"schema": {"type": "string"}}}}
}
_WATCH_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON events: start, fs, keepalive, overflow, end, error",
        "content": {NDJSON: {"schema": {"type": "string"}}},
    }
}


def _files(svc: Services) -> FileTreeService:
    return FileTreeService(svc.sandboxes)


async def streamed(chunks: AsyncIterator[bytes], media_type: str) -> StreamingResponse:
    """A response for ``chunks``, its first chunk pulled now: an error the
    sandbox reports (a missing path) must be a 4xx, not a broken 200."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    # A stream that knows its length (a file the runtime reads itself) goes
    # out with a Content-Length: chunked framing costs a copy of every chunk.
    size = getattr(chunks, "size", None)
    headers = {"Content-Length": str(size)} if isinstance(size, int) else None
    return StreamingResponse(body(), media_type=media_type, headers=headers)


@router.get("/tar", response_class=StreamingResponse, responses=_TAR_DOC)
async def download_dir(
    sandbox_id: SandboxId, svc: Svc, caller: Caller, path: str = Query(...)
) -> StreamingResponse:
    chunks = await _files(svc).read_tar(caller.tenant, sandbox_id, path)
    return await streamed(chunks, TAR)


@router.put("/tar", response_model=FileEntryOut, openapi_extra=_TAR_BODY)
async def upload_dir(
    request: Request,
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    user: User = "user",
    overwrite: bool = False,
) -> FileEntryOut:
    """Unpack a tar (plain or compressed) as the directory ``path``. It appears
    whole or not at all; an existing directory is replaced only with ``overwrite``."""
    entry = await _files(svc).write_tar(
        caller.tenant, sandbox_id, path, request.stream(), user=user, overwrite=overwrite
    )
    return entry_out(entry)


@router.post("/batch", response_model=FileList, openapi_extra=_TAR_BODY)
async def write_files(
    request: Request, sandbox_id: SandboxId, svc: Svc, caller: Caller, user: User = "user"
) -> FileList:
    """Write every regular file of a tar, each named by its destination path
    (absolute, or relative to the user's home). All or nothing."""
    entries = await _files(svc).write_files(caller.tenant, sandbox_id, request.stream(), user=user)
    return FileList(entries=[entry_out(e) for e in entries])


@router.post("/chmod", response_model=FileEntryOut)
async def chmod(
    sandbox_id: SandboxId, body: ChmodRequest, svc: Svc, caller: Caller, user: User = "user"
) -> FileEntryOut:
    entry = await _files(svc).chmod(caller.tenant, sandbox_id, body.path, body.mode, user=user)
    return entry_out(entry)


@router.post("/chown", response_model=FileEntryOut)
async def chown(
    sandbox_id: SandboxId, body: ChownRequest, svc: Svc, caller: Caller, user: User = "user"
) -> FileEntryOut:
    entry = await _files(svc).chown(
        caller.tenant,
        sandbox_id,
        body.path,
        body.owner,
        body.group,
        recursive=body.recursive,
        user=user,
    )
    return entry_out(entry)


@router.get("/find", response_model=FileList)
async def find(
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    pattern: str = Query(...),
    limit: int = DEFAULT_FIND_LIMIT,
    user: User = "user",
) -> FileList:
    """Paths under ``path`` matching the glob ``pattern`` (``**`` spans directories).
    More matches than ``limit`` is ``payload_too_large``, never a cut list."""
    entries = await _files(svc).find(
        caller.tenant, sandbox_id, path, pattern, limit=limit, user=user
    )
    return FileList(entries=[entry_out(e) for e in entries])


@router.get("/watch", response_class=StreamingResponse, responses=_WATCH_DOC)
async def watch(
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    recursive: bool = False,
    user: User = "user",
) -> StreamingResponse:
    lines = await _files(svc).watch(caller.tenant, sandbox_id, path, recursive=recursive, user=user)
    return StreamingResponse(_ndjson(lines), media_type=NDJSON, headers=_NO_BUFFERING)


async def _ndjson(lines: AsyncIterator[WatchLine]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            event = {"event": line.event, **line.fields}
            yield json.dumps(event, separators=(",", ":")).encode() + b"\n"
    finally:
        close = getattr(lines, "aclose", None)
        if close is not None:
            await close()
