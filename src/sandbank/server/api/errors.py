"""Every failure leaves as ``{"code", "message"}`` with the status of its class."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sandbank.errors import BadRequest, SandbankError, ValidationFailed

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: ("not_found", "no such endpoint; see /docs for the API"),
    405: ("method_not_allowed", "this endpoint does not accept that method"),
}


def _describe(errors: list[Any]) -> SandbankError:
    parts = []
    malformed = False
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        if err.get("type") == "json_invalid":
            malformed = True
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    message = "; ".join(parts) or "invalid request"
    if malformed:
        return BadRequest(f"request body is not valid JSON: {message}")
    return ValidationFailed(
        message,
        errors=[
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg"))}
            for e in errors
        ],
    )


def error_response(exc: SandbankError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def install(app: FastAPI) -> None:
    @app.exception_handler(SandbankError)
    async def _sandbank(_: Request, exc: SandbankError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_describe(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        return JSONResponse({"code": code, "message": message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"code": "internal_error", "message": f"internal error: {type(exc).__name__}: {exc}"},
            status_code=500,
        )
