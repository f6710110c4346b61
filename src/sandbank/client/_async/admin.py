"""Calls about the installation rather than one sandbox: templates and API keys."""

from __future__ import annotations

import builtins
from urllib.parse import quote

from ..models import ApiKeyInfo, TemplateInfo
from ._http import AsyncApiClient


class AsyncAdminClient(AsyncApiClient):
    """Templates are visible to every key; the key calls need an admin key."""

    async def list_templates(self) -> builtins.list[TemplateInfo]:
        data = await self._connection.request_json("GET", "/v1/templates")
        return [TemplateInfo.from_dict(item) for item in data["data"]]

    async def create_key(
        self, tenant: str, *, name: str | None = None, admin: bool = False
    ) -> ApiKeyInfo:
        """A new key for ``tenant``; its secret is in ``.key`` of this answer only."""
        body = {"tenant": tenant, "name": name, "admin": admin}
        data = await self._connection.request_json("POST", "/v1/keys", json=body)
        return ApiKeyInfo.from_dict(data)

    async def list_keys(self) -> builtins.list[ApiKeyInfo]:
        data = await self._connection.request_json("GET", "/v1/keys")
        return [ApiKeyInfo.from_dict(item) for item in data["data"]]

    async def revoke_key(self, key_id: str) -> None:
        await self._connection.request("DELETE", f"/v1/keys/{quote(key_id, safe='')}")

