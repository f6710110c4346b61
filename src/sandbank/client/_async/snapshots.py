"""Snapshots of the caller's tenant: list, look up, delete. Taking one and
restoring one are calls on the sandbox (``snapshot``, ``restore``); a sandbox
is created from one with ``Sandbox.create(snapshot=...)``."""

from __future__ import annotations

import builtins
from urllib.parse import quote

from ..models import SnapshotInfo
from ._http import AsyncApiClient

SNAPSHOTS_PATH = "/v1/snapshots"


class AsyncSnapshots(AsyncApiClient):
    async def list(self, sandbox_id: str | None = None) -> builtins.list[SnapshotInfo]:
        """Every snapshot of the tenant, or those taken of ``sandbox_id``."""
        path = SNAPSHOTS_PATH
        if sandbox_id is not None:
            path = f"/v1/sandboxes/{quote(sandbox_id, safe='')}/snapshots"
        data = await self._connection.request_json("GET", path)
        return [SnapshotInfo.from_dict(item) for item in data["data"]]

    async def get(self, snapshot: str) -> SnapshotInfo:
        """By id or name; ``SnapshotNotFound`` when the tenant has none such."""
        path = f"{SNAPSHOTS_PATH}/{quote(snapshot, safe='')}"
        return SnapshotInfo.from_dict(await self._connection.request_json("GET", path))

    async def delete(self, snapshot: str) -> None:
        """Remove the snapshot and free its space; sandboxes made from it stay."""
        await self._connection.request("DELETE", f"{SNAPSHOTS_PATH}/{quote(snapshot, safe='')}")

