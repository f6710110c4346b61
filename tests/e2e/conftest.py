"""Helpers for tests that drive the real server over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def make_sandbox(api: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create sandboxes that are killed when the test ends, whatever happens."""
    made: list[str] = []

    def make(**body: Any) -> dict[str, Any]:
        resp = api.post("/v1/sandboxes", json=body)
        assert resp.status_code == 201, resp.text
        info: dict[str, Any] = resp.json()
        made.append(info["id"])
        return info

    yield make
    for sandbox_id in made:
        resp = api.delete(f"/v1/sandboxes/{sandbox_id}")
        assert resp.status_code == 204, resp.text


@pytest.fixture
def sandbox(make_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_sandbox()
