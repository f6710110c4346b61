"""Calls about the installation rather than one sandbox: templates and API keys."""

from __future__ import annotations

import builtins
from types import TracebackType
from typing import Self
from urllib.parse import quote

import httpx

from ..models import ApiKeyInfo, TemplateInfo
from ._http import AsyncApiConnection


class AsyncAdminClient:
    """Templates are visible to every key; the key calls need an admin key."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._connection = AsyncApiConnection.open(api_key, base_url, transport)

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

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
