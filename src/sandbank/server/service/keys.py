"""API keys: issued once in clear, stored hashed, resolved to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sandbank.errors import Forbidden, KeyNotFound, Unauthorized
from sandbank.server.store.base import ApiKeyRecord, QuotaRecord, Store

KEY_PREFIX = "sbk_"
DEFAULT_TENANT = "default"
#: How long a key's lookup is trusted without reading the store again. Keys
#: are issued and revoked only through this service, which forgets a revoked
#: key at once; the bound covers a store changed behind the server's back.
KEY_CACHE_TTL = timedelta(seconds=10)


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
        #: Valid keys seen lately (hash -> caller, when read): a store lookup is
        #: a thread hop and a query on every request. Unknown keys are not kept.
        self._known: dict[str, tuple[Principal, datetime]] = {}
        #: Counts revocations: a lookup that a revoke overtook is not kept.
        self._revocations = 0

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthorized(
                "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        digest = hash_key(key)
        if self._static_hash is not None and hmac.compare_digest(digest, self._static_hash):
            return Principal(tenant=DEFAULT_TENANT, admin=True, key_id=None)
        now = self._clock()
        known = self._known.get(digest)
        if known is not None and now - known[1] < KEY_CACHE_TTL:
            return known[0]
        revocations = self._revocations
        record = await self._store.key_by_hash(digest)
        if record is None or record.revoked_at is not None:
            self._known.pop(digest, None)
            raise Unauthorized("invalid or revoked API key")
        caller = Principal(tenant=record.tenant, admin=record.admin, key_id=record.id)
        if revocations == self._revocations:
            self._known[digest] = (caller, now)
        return caller

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
        self._revocations += 1
        self._forget(key_id)
        record = await self._store.revoke_key(key_id, self._clock())
        assert record is not None
        self._revocations += 1  # lookups that read the store before the write
        self._forget(key_id)
        return record

    def _forget(self, key_id: str) -> None:
        for digest, (caller, _) in list(self._known.items()):
            if caller.key_id == key_id:
                del self._known[digest]

    async def has_admin_key(self) -> bool:
        return any(k.admin and k.revoked_at is None for k in await self._store.list_keys(None))

    async def get_quota(self, tenant: str) -> QuotaRecord | None:
        return await self._store.get_quota(tenant)

    async def set_quota(self, record: QuotaRecord) -> None:
        await self._store.set_quota(record)


def require_admin(caller: Principal) -> None:
    if not caller.admin:
        raise Forbidden("this operation needs an admin API key")
