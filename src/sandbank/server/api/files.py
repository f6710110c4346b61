"""/v1/sandboxes/{id}/files: streamed reads and writes, listing, metadata.

Bodies stream straight between the HTTP connection and the agent, so a
1 GB file never sits in the server's memory.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from sandbank.errors import ValidationFailed
from sandbank.protocol.api import FileEntryOut, FileList, MkdirOut, MkdirRequest, MoveRequest
from sandbank.server.api.convert import entry_out
from sandbank.server.api.deps import Caller, SandboxId, Svc
from sandbank.server.api.files_tree import streamed
from sandbank.server.service.files import FileTreeService

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])

User = Literal["user", "root"]


@router.get("")
async def read_file(
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    format: Literal["bytes", "text"] = "bytes",
    encoding: str | None = None,
) -> StreamingResponse:
    """The file's bytes. With ``format=text`` the whole file must decode as
    ``encoding`` (default utf-8), else ``not_text`` (400) before any byte is sent."""
    if format == "bytes":
        if encoding is not None:
            raise ValidationFailed("encoding applies to format=text only", field="encoding")
        channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
        return await streamed(channel.read_file(path), "application/octet-stream")
    name, chunks = await FileTreeService(svc.sandboxes).read_text(
        caller.tenant, sandbox_id, path, encoding or "utf-8"
    )
    return await streamed(chunks, f"text/plain; charset={name}")


@router.put("", response_model=FileEntryOut)
async def write_file(
    request: Request,
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    user: User = "user",
) -> FileEntryOut:
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    entry = await channel.write_file(path, request.stream(), user=user)
    return entry_out(entry)


@router.delete("", status_code=204)
async def remove(
    sandbox_id: SandboxId,
    svc: Svc,
    caller: Caller,
    path: str = Query(...),
    recursive: bool = False,
) -> Response:
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    await channel.remove(path, recursive=recursive)
    return Response(status_code=204)


@router.get("/list", response_model=FileList)
async def list_dir(
    sandbox_id: SandboxId, svc: Svc, caller: Caller, path: str = Query(...), depth: int = 1
) -> FileList:
    if not 1 <= depth <= 32:
        raise ValidationFailed(f"depth must be between 1 and 32, got {depth}", field="depth")
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    return FileList(entries=[entry_out(e) for e in await channel.list_dir(path, depth)])


@router.get("/stat", response_model=FileEntryOut)
async def stat(
    sandbox_id: SandboxId, svc: Svc, caller: Caller, path: str = Query(...)
) -> FileEntryOut:
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    return entry_out(await channel.stat(path))


@router.post("/move", response_model=FileEntryOut)
async def move(
    sandbox_id: SandboxId, body: MoveRequest, svc: Svc, caller: Caller, user: User = "user"
) -> FileEntryOut:
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    return entry_out(await channel.move(body.source, body.destination, user=user))


@router.post("/mkdir", response_model=MkdirOut)
async def make_dir(
    sandbox_id: SandboxId, body: MkdirRequest, svc: Svc, caller: Caller, user: User = "user"
) -> MkdirOut:
    channel = await svc.sandboxes.files(caller.tenant, sandbox_id)
    created, entry = await channel.make_dir(body.path, user=user)
    return MkdirOut(created=created, entry=entry_out(entry))
