"""The network policy and preview access in the service, over the fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbank.errors import SandboxNotFound, ValidationFailed
from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.fake import FakeRuntime
from sandbank.server.service.params import CreateParams
from sandbank.server.service.policy import Quota
from sandbank.server.service.preview import PreviewGate, load_secret
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.store.sql import SqlStore
from tests.unit.test_service import LIMITS, Clock

Parts = tuple[SandboxService, FakeRuntime, SqlStore, PreviewGate]
ALLOW_LIST = make_policy(True, ["192.0.2.1"], ["0.0.0.0/0"])


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    runtime = FakeRuntime()
    service = SandboxService(store, runtime, LIMITS, Quota(3, 8, 4096), Clock(), Telemetry())
    gate = PreviewGate(store, runtime, tmp_path / "preview.key")
    yield service, runtime, store, gate
    await store.close()


async def test_policy_is_given_to_the_runtime_and_stored(parts: Parts) -> None:
    service, runtime, store, _ = parts
    record = await service.create("t1", CreateParams(network=ALLOW_LIST))
    assert runtime.boxes[record.id].spec.network == ALLOW_LIST
    assert NetworkPolicy.from_dict(record.network) == ALLOW_LIST
    stored = await store.get_sandbox(record.id)
    assert stored is not None and NetworkPolicy.from_dict(stored.network) == ALLOW_LIST


async def test_policy_changes_while_running(parts: Parts) -> None:
    service, runtime, _, _ = parts
    record = await service.create("t1", CreateParams())
    assert NetworkPolicy.from_dict(record.network) == NetworkPolicy()
    closed = make_policy(False)
    updated = await service.set_network("t1", record.id, closed)
    assert NetworkPolicy.from_dict(updated.network) == closed
    assert runtime.boxes[record.id].spec.network == closed
    with pytest.raises(SandboxNotFound):
        await service.set_network("t2", record.id, closed)
    await service.kill("t1", record.id)
    with pytest.raises(SandboxNotFound):
        await service.set_network("t1", record.id, closed)


async def test_preview_access(parts: Parts, tmp_path: Path) -> None:
    service, _, _, gate = parts
    record = await service.create("t1", CreateParams())
    token = gate.token(record.id)
    assert token == gate.token(record.id) != gate.token("other")
    assert await gate.open(record.id, 8000, token=token, tenant=None) == ("127.0.0.1", 8000)
    assert await gate.open(record.id, 8000, token=None, tenant="t1") == ("127.0.0.1", 8000)
    for token_given, tenant in ((token[::-1], None), (None, "t2"), (None, None)):
        with pytest.raises(SandboxNotFound):
            await gate.open(record.id, 8000, token=token_given, tenant=tenant)
    for port in (0, 70000):
        with pytest.raises(ValidationFailed, match="port"):
            await gate.open(record.id, port, token=token, tenant=None)
    await service.kill("t1", record.id)
    with pytest.raises(SandboxNotFound):
        await gate.open(record.id, 8000, token=token, tenant=None)
    # The key survives a restart: the same tokens.
    assert load_secret(tmp_path / "preview.key") == load_secret(tmp_path / "preview.key")
    assert (tmp_path / "preview.key").stat().st_mode & 0o777 == 0o600
