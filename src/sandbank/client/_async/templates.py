"""Templates: build one from a spec (log streamed to a callback), import an OCI
image archive on the server's host, make one from a snapshot, list, get,
alias, delete.

A spec is a dict (see docs/templates.md): ``base``, ``apt``, ``apt_sources``,
``pip``, ``pip_index_url``, ``files``, ``run``, ``env``, ``workdir``, ``start``,
``ready``. Building, importing, aliasing and deleting need an admin key.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import quote

from sandbank import errors

from ..models import TemplateBuild, TemplateInfo
from ._http import AsyncApiClient, QueryParams

#: Called with each ``step`` and ``log`` event of a build, as it happens.
OnEvent = Callable[[dict[str, Any]], None]


async def _file_chunks(path: str, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with open(path, "rb") as src:
        while chunk := src.read(size):
            yield chunk


def _path(name: str) -> str:
    return f"/v1/templates/{quote(name, safe=':')}"


class AsyncTemplates(AsyncApiClient):
    async def build(
        self,
        name: str,
        spec: dict[str, Any] | None = None,
        *,
        aliases: Iterable[str] = (),
        on_log: OnEvent | None = None,
        timeout: float | None = None,
    ) -> TemplateBuild:
        """Build template ``name`` from ``spec`` (or find it cached). ``on_log`` gets
        every ``{"type": "step", ...}`` and ``{"type": "log", "line", ...}`` event;
        a failed step raises ``TemplateBuildFailed`` (its message ends with the
        step's last lines). ``timeout``: seconds of silence allowed (None: no limit)."""
        body = {"name": name, "spec": spec or {}, "aliases": list(aliases)}
        pending = b""
        async for chunk in self._connection.stream_bytes(
            "POST", "/v1/templates", json=body, timeout=timeout
        ):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    result = self._event(json.loads(line), on_log)
                    if result is not None:
                        return result
        if pending.strip():
            result = self._event(json.loads(pending), on_log)
            if result is not None:
                return result
        raise errors.SandbankError(f"the build of template {name!r} ended without a result")

    @staticmethod
    def _event(event: dict[str, Any], on_log: OnEvent | None) -> TemplateBuild | None:
        kind = event.get("type")
        if kind == "result":
            return TemplateBuild.from_dict(event)
        if kind == "error":
            details = {
                k: v for k, v in event.items() if k not in ("type", "status", "code", "message")
            }
            raise errors.from_status(
                int(event.get("status", 500)),
                str(event.get("code", "internal_error")),
                str(event.get("message", "template build failed")),
                **details,
            )
        if on_log is not None:
            on_log(event)
        return None

    async def list(self) -> builtins.list[TemplateInfo]:
        data = await self._connection.request_json("GET", "/v1/templates")
        return [TemplateInfo.from_dict(item) for item in data["data"]]

    async def get(self, name: str) -> TemplateInfo:
        """By name or alias; ``TemplateNotFound`` (``.details["templates"]`` lists them)."""
        return TemplateInfo.from_dict(await self._connection.request_json("GET", _path(name)))

    async def delete(self, name: str) -> None:
        """``InvalidState`` while sandboxes or other templates use it."""
        await self._connection.request("DELETE", _path(name))

    async def alias(self, name: str, alias: str) -> TemplateInfo:
        data = await self._connection.request_json(
            "POST", f"{_path(name)}/aliases", json={"alias": alias}
        )
        return TemplateInfo.from_dict(data)

    async def unalias(self, name: str, alias: str) -> None:
        await self._connection.request("DELETE", f"{_path(name)}/aliases/{quote(alias, safe=':')}")

    async def import_image(
        self,
        name: str,
        path: str,
        *,
        aliases: Iterable[str] = (),
        upload: bool = False,
        timeout: float | None = 1800,
    ) -> TemplateInfo:
        """Template ``name`` from an OCI layout tar or ``docker save`` tar at ``path``:
        on the server's host, or (``upload=True``) here, sent in the request.
        ``ValidationFailed`` for an image without python3."""
        if upload:
            params: QueryParams = [("name", name), *(("alias", a) for a in aliases)]
            data = await self._connection.request_json(
                "POST", "/v1/templates/import/upload", params=params,
                content=_file_chunks(path), timeout=timeout,
            )  # fmt: skip
        else:
            body = {"name": name, "path": path, "aliases": list(aliases)}
            data = await self._connection.request_json(
                "POST", "/v1/templates/import", json=body, timeout=timeout
            )
        return TemplateInfo.from_dict(data)

    async def from_snapshot(
        self,
        snapshot: str,
        name: str,
        *,
        aliases: Iterable[str] = (),
        timeout: float | None = 1800,
    ) -> TemplateBuild:
        """Template ``name`` from one of your snapshots (id or name): its files,
        deletions included, over the snapshot's template, whose settings it takes.
        The same snapshot again answers from the cache (``.cached``); a name taken
        by another template raises ``Conflict``, an unknown snapshot
        ``SnapshotNotFound``. Needs an admin key: templates are shared."""
        body = {"name": name, "snapshot": snapshot, "aliases": list(aliases)}
        data = await self._connection.request_json(
            "POST", "/v1/templates/from-snapshot", json=body, timeout=timeout
        )
        return TemplateBuild.from_dict(data)

