"""One authenticated HTTP connection to the sandbank server.

Every answer outside 2xx becomes the ``sandbank.errors`` class the server
named, and every transport failure a ``ServerUnreachable`` (or ``Timeout``)
that says which URL was tried, so callers never see raw httpx exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from sandbank import errors

from .._config import (
    CONNECT_TIMEOUT,
    REQUEST_TIMEOUT,
    ConnectionConfig,
    error_from_response,
    resolve_config,
    tls_context,
)
from ..exceptions import ServerUnreachable

QueryValue = str | int | float | bool | None
QueryParams = Mapping[str, QueryValue] | list[tuple[str, QueryValue]]
#: Seconds to wait for a read or write; ``None`` waits for ever.
TimeoutSeconds = float | None


def _timeout(seconds: TimeoutSeconds) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=CONNECT_TIMEOUT)


class AsyncApiConnection:
    def __init__(
        self,
        config: ConnectionConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            headers=config.headers(),
            timeout=_timeout(REQUEST_TIMEOUT),
            transport=transport,
            verify=tls_context(),
        )

    @classmethod
    def open(
        cls,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        return cls(resolve_config(api_key, base_url), transport=transport)

    @property
    def base_url(self) -> str:
        return self.config.base_url

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        timeout: TimeoutSeconds = REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                timeout=_timeout(timeout),
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise self._transport_error(exc, timeout) from exc
        if not response.is_success:
            raise error_from_response(
                response.status_code, response.content, response.reason_phrase
            )
        return response

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        timeout: TimeoutSeconds = REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        response = await self.request(
            method,
            path,
            params=params,
            json=json,
            content=content,
            timeout=timeout,
            headers=headers,
        )
        try:
            return response.json()
        except ValueError as exc:
            raise errors.SandbankError(
                f"the server at {self.base_url} answered {method} {path} with something "
                f"other than JSON; is {self.base_url} really a sandbank server?"
            ) from exc

    def stream_bytes(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        timeout: TimeoutSeconds = REQUEST_TIMEOUT,
        json: Any = None,
    ) -> AsyncIterator[bytes]:
        """The response body chunk by chunk, never held whole in memory."""
        return self.stream(method, path, params=params, json=json, timeout=timeout)

    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        timeout: TimeoutSeconds = REQUEST_TIMEOUT,
    ) -> AsyncGenerator[bytes, None]:
        """Send a request and yield its answer's body as it arrives, chunk by
        chunk; an error answer raises before the first chunk. ``timeout`` bounds
        each read, not the whole stream. Closing the iterator closes the response."""
        request = self._client.build_request(
            method, path, params=params, json=json, content=content, timeout=_timeout(timeout)
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, timeout) from exc
        try:
            if not response.is_success:
                await response.aread()
                raise error_from_response(
                    response.status_code, response.content, response.reason_phrase
                )
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.TransportError as exc:
            raise self._transport_error(exc, timeout) from exc
        finally:
            await response.aclose()

    def _transport_error(self, exc: httpx.TransportError, timeout: TimeoutSeconds) -> Exception:
        url = self.base_url
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(
                f"cannot reach the sandbank server at {url} ({exc or type(exc).__name__}); "
                f"is it running? (SANDBANK_URL sets the address)"
            )
        if isinstance(exc, httpx.TimeoutException):
            return errors.Timeout(f"the sandbank server at {url} did not answer within {timeout}s")
        return ServerUnreachable(
            f"lost the connection to the sandbank server at {url} ({exc or type(exc).__name__})"
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncApiClient:
    """A client object with a connection of its own (snapshots, templates, admin):
    made from a key and URL, closed with ``close`` or as a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._connection = AsyncApiConnection.open(api_key, base_url, transport)

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
