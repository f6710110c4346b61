"""API keys: issued once in clear, stored hashed, resolved to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sandbank.errors import Forbidden, KeyNotFound, Unauthorized
from sandbank.server.store.base import ApiKeyRecord, QuotaRecord, Store

KEY_PREFIX = "sbk_"
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose sandboxes they see, and admin rights."""

    tenant: str
    admin: bool
    key_id: str | None


def hash_key(key: str) -> str:
    # Keys carry 190+ bits of randomness, so a fast hash is enough (no salt/KDF needed).
    return hashlib.sha256(key.encode()).hexdigest()


class KeyService:
    def __init__(self, store: Store, clock: Callable[[], datetime], static_admin_key: str | None):
        self._store = store
        self._clock = clock
        self._static_hash = hash_key(static_admin_key) if static_admin_key else None

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthorized(
                "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        digest = hash_key(key)
        if self._static_hash is not None and hmac.compare_digest(digest, self._static_hash):
            return Principal(tenant=DEFAULT_TENANT, admin=True, key_id=None)
        record = await self._store.key_by_hash(digest)
        if record is None or record.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        return Principal(tenant=record.tenant, admin=record.admin, key_id=record.id)

    async def create(
        self, tenant: str, name: str | None = None, admin: bool = False
    ) -> tuple[ApiKeyRecord, str]:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            tenant=tenant,
            name=name,
            prefix=key[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(key),
            admin=admin,
            created_at=self._clock(),
        )
        await self._store.insert_key(record)
        return record, key

    async def list(self, caller: Principal) -> list[ApiKeyRecord]:
        return await self._store.list_keys(None if caller.admin else caller.tenant)

    async def revoke(self, caller: Principal, key_id: str) -> ApiKeyRecord:
        visible = {k.id: k for k in await self.list(caller)}
        if key_id not in visible:
            raise KeyNotFound(f"no API key {key_id!r}")
        record = await self._store.revoke_key(key_id, self._clock())
        assert record is not None
        return record

    async def has_admin_key(self) -> bool:
        return any(k.admin and k.revoked_at is None for k in await self._store.list_keys(None))

    async def get_quota(self, tenant: str) -> QuotaRecord | None:
        return await self._store.get_quota(tenant)

    async def set_quota(self, record: QuotaRecord) -> None:
        await self._store.set_quota(record)


def require_admin(caller: Principal) -> None:
    if not caller.admin:
        raise Forbidden("this operation needs an admin API key")
