"""FileTreeService's own policy, over the fake runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbank.errors import SandboxNotFound, Unsupported, ValidationFailed
from sandbank.runtime.agent_client import AgentClient
from sandbank.runtime.fake import FakeChannel
from sandbank.runtime.filetree import FileTreeChannel
from sandbank.server.service.files import FileTreeService
from sandbank.server.service.params import CreateParams
from tests.unit.test_service import Parts, parts  # noqa: F401  (the fixture)


def test_the_agent_channel_offers_file_trees(tmp_path: Path) -> None:
    assert isinstance(AgentClient(tmp_path / "agent.sock"), FileTreeChannel)


class _NoTrees(FakeChannel):
    """A channel without file trees, as a runtime may offer."""

    watch = None  # type: ignore[assignment]


async def test_unsupported_runtime_and_bounds(parts: Parts) -> None:  # noqa: F811
    service, runtime, _, _ = parts
    files = FileTreeService(service)
    record = await service.create("t1", CreateParams())
    assert isinstance(runtime.channel(record.id), FileTreeChannel)
    runtime.channel = lambda sandbox_id: _NoTrees(runtime.boxes[sandbox_id])  # type: ignore[method-assign]
    with pytest.raises(Unsupported, match="directory transfers"):
        await files.find("t1", record.id, "/", "*", limit=10, user="user")
    with pytest.raises(ValidationFailed, match="limit"):
        await files.find("t1", record.id, "/", "*", limit=0, user="user")
    with pytest.raises(ValidationFailed, match="mode"):
        await files.chmod("t1", record.id, "/x", 0o20000, user="user")
    with pytest.raises(ValidationFailed, match="owner"):
        await files.chown("t1", record.id, "/x", None, None, recursive=False, user="user")
    with pytest.raises(ValidationFailed, match="encoding"):
        await files.read_text("t1", record.id, "/x", "no-such-codec")
    with pytest.raises(SandboxNotFound):
        await files.channel("t2", record.id)
