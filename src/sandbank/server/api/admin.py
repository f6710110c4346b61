"""API keys and tenant quotas (templates: api/templates.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from sandbank.protocol.api import CreateKeyRequest, KeyCreated, KeyOut, QuotaBody
from sandbank.server.api.deps import Caller, Svc
from sandbank.server.service.keys import require_admin
from sandbank.server.store.base import ApiKeyRecord, QuotaRecord

router = APIRouter(prefix="/v1", tags=["admin"])


def _key_out(record: ApiKeyRecord) -> dict[str, Any]:
    return KeyOut(
        id=record.id,
        tenant=record.tenant,
        name=record.name,
        prefix=record.prefix,
        admin=record.admin,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    ).model_dump(mode="json")


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: CreateKeyRequest, svc: Svc, caller: Caller) -> dict[str, Any]:
    require_admin(caller)
    record, key = await svc.keys.create(body.tenant, body.name, body.admin)
    return {**_key_out(record), "key": key}


@router.get("/keys")
async def list_keys(svc: Svc, caller: Caller) -> dict[str, Any]:
    return {"data": [_key_out(k) for k in await svc.keys.list(caller)]}


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, svc: Svc, caller: Caller) -> Response:
    await svc.keys.revoke(caller, key_id)
    return Response(status_code=204)


@router.get("/tenants/{tenant}/quota", response_model=QuotaBody)
async def get_quota(tenant: str, svc: Svc, caller: Caller) -> QuotaBody:
    require_admin(caller)
    record = await svc.keys.get_quota(tenant)
    if record is None:
        return QuotaBody()
    return QuotaBody(
        max_sandboxes=record.max_sandboxes,
        max_vcpu=record.max_vcpu,
        max_memory_mb=record.max_memory_mb,
    )


@router.put("/tenants/{tenant}/quota", response_model=QuotaBody)
async def set_quota(tenant: str, body: QuotaBody, svc: Svc, caller: Caller) -> QuotaBody:
    require_admin(caller)
    await svc.keys.set_quota(QuotaRecord(tenant=tenant, **body.model_dump()))
    return body
