"""/v1/templates: list, get, build (streamed NDJSON), import, from a snapshot,
alias, delete.

A build answers 200 with one JSON event a line as it happens:
``{"type": "step", "step", "total", "title", "elapsed"}``,
``{"type": "log", "step", "stream", "line"}``, and last either
``{"type": "result", "cached", "seconds", "template": {...}}`` or
``{"type": "error", "code", "message", ...}``. Errors found before the build
starts (bad name, unknown base, invalid spec) are ordinary 4xx answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from sandbank.errors import SandbankError
from sandbank.protocol.templates import (
    AliasRequest,
    BuildTemplateRequest,
    ImportTemplateRequest,
    SnapshotTemplateRequest,
)
from sandbank.runtime.base import TemplateInfo
from sandbank.server.api.deps import Caller, Svc
from sandbank.server.service.keys import require_admin
from sandbank.server.service.templates import BuildPlan, TemplateService

router = APIRouter(prefix="/v1/templates", tags=["templates"])
NDJSON = "application/x-ndjson"
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON events: step, log, then result or error",
        "content": {NDJSON: {"schema": {"type": "string"}}},
    }
}


def template_out(t: TemplateInfo) -> dict[str, Any]:
    return {
        "name": t.name,
        "ready": t.ready,
        "kind": t.kind,
        "base": t.base,
        "aliases": list(t.aliases),
        "recipe_hash": t.recipe_hash,
        "size_bytes": t.size_bytes,
        "env": dict(t.env),
        "start_cmd": t.start_cmd,
        "ready_cmd": t.ready_cmd,
        "ready_timeout": t.ready_timeout,
        "workdir": t.workdir,
        "user": t.user,
        "cmd": list(t.cmd),
        "built_at": t.built_at,
    }


def _templates(svc: Svc) -> TemplateService:
    assert svc.templates is not None, "template service not wired"
    return svc.templates


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def _events(templates: TemplateService, plan: BuildPlan) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    started = time.monotonic()

    async def build() -> None:
        try:
            info, cached = await templates.run_build(plan, queue.put_nowait)
            queue.put_nowait({
                "type": "result", "cached": cached, "seconds": round(time.monotonic() - started, 3),
                "template": template_out(info),
            })  # fmt: skip
        except SandbankError as exc:
            queue.put_nowait({"type": "error", "status": exc.status, **exc.to_dict()})
        except Exception as exc:
            queue.put_nowait({"type": "error", "status": 500, "code": "internal_error",
                              "message": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            raise
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(build())
    try:
        while (event := await queue.get()) is not None:
            yield _line(event)
    finally:
        # A client that went away cancels its build (the build sandbox is removed).
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


@router.get("")
async def list_templates(svc: Svc, caller: Caller) -> dict[str, Any]:
    return {"data": [template_out(t) for t in await _templates(svc).list()]}


@router.post("", response_class=StreamingResponse, responses=_STREAM_DOC)
async def build_template(body: BuildTemplateRequest, svc: Svc, caller: Caller) -> StreamingResponse:
    require_admin(caller)
    templates = _templates(svc)
    plan = await templates.prepare_build(body.name, body.spec, tuple(body.aliases))
    return StreamingResponse(
        _events(templates, plan),
        media_type=NDJSON,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/import", status_code=201)
async def import_template(body: ImportTemplateRequest, svc: Svc, caller: Caller) -> dict[str, Any]:
    require_admin(caller)
    info = await _templates(svc).import_image(body.name, body.path, tuple(body.aliases))
    return template_out(info)


@router.post("/import/upload", status_code=201)
async def import_uploaded(
    request: Request,
    svc: Svc,
    caller: Caller,
    name: str,
    alias: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """The archive is the request body (``application/x-tar``), streamed to disk."""
    require_admin(caller)
    info = await _templates(svc).import_upload(name, request.stream(), tuple(alias or ()))
    return template_out(info)


@router.post("/from-snapshot", status_code=201)
async def template_from_snapshot(
    body: SnapshotTemplateRequest, svc: Svc, caller: Caller, response: Response
) -> dict[str, Any]:
    """The snapshot's files as a template on its template: 201, or 200 with
    ``cached`` when the same snapshot made it before (shaped like a build's result)."""
    require_admin(caller)
    started = time.monotonic()
    info, cached = await _templates(svc).from_snapshot(
        caller.tenant, body.name, body.snapshot, tuple(body.aliases)
    )
    if cached:
        response.status_code = 200
    seconds = round(time.monotonic() - started, 3)
    return {"cached": cached, "seconds": seconds, "template": template_out(info)}


@router.get("/{name}")
async def get_template(name: str, svc: Svc, caller: Caller) -> dict[str, Any]:
    return template_out(await _templates(svc).get(name))


@router.post("/{name}/aliases")
async def add_alias(name: str, body: AliasRequest, svc: Svc, caller: Caller) -> dict[str, Any]:
    require_admin(caller)
    return template_out(await _templates(svc).alias(name, body.alias))


@router.delete("/{name}/aliases/{alias}", status_code=204)
async def remove_alias(name: str, alias: str, svc: Svc, caller: Caller) -> Response:
    require_admin(caller)
    await _templates(svc).unalias(name, alias)
    return Response(status_code=204)


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, svc: Svc, caller: Caller) -> Response:
    require_admin(caller)
    await _templates(svc).delete(name)
    return Response(status_code=204)
