"""Unauthenticated health and Prometheus endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sandbank.server.api.deps import Svc

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(svc: Svc) -> Response:
    return Response(generate_latest(svc.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
