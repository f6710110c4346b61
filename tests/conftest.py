"""Shared fixtures: the real server as a subprocess, and the leak check that
runs after every test module."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cgroup_scope import CgroupScope
from tests.support.leaks import leftovers, remember
from tests.support.server import ServerProcess, free_port, purge_data_dir

TEST_ROOT = Path(os.environ.get("SANDBANK_TEST_ROOT", "/var/lib/sandbank-test"))
TEMPLATES = Path(os.environ.get("SANDBANK_TEST_TEMPLATES", str(TEST_ROOT / "templates")))
#: This run's servers live here, so concurrent runs never see each other's sandboxes.
RUN_ROOT = TEST_ROOT / f"run-{os.getpid()}"
SCOPE: CgroupScope | None = None


def is_root() -> bool:
    return os.geteuid() == 0


def new_server(name: str, **extra_env: str) -> ServerProcess:
    data_dir = remember(RUN_ROOT / f"{name}-{secrets.token_hex(3)}")
    return ServerProcess(
        data_dir=data_dir,
        templates_dir=TEMPLATES,
        api_key="sbk_test_" + secrets.token_hex(16),
        port=free_port(),
        extra_env=extra_env,
    )


def run_cgroups() -> list[str]:
    """Sandbox cgroups that exist now under this run's own cgroup."""
    return SCOPE.sandbox_cgroups() if SCOPE is not None else []


def purge_dead_runs() -> None:
    """Clean up after earlier runs that were killed before their own cleanup."""
    for run in TEST_ROOT.glob("run-*"):
        pid = run.name.removeprefix("run-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for data_dir in [d for d in run.iterdir() if d.is_dir()]:
                purge_data_dir(data_dir, TEMPLATES)
            shutil.rmtree(run, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    global SCOPE
    if is_root():
        TEST_ROOT.mkdir(parents=True, exist_ok=True)
        # Root inside a sandbox is an unprivileged host uid that must traverse here.
        os.chmod(TEST_ROOT, 0o711)
        purge_dead_runs()
        RUN_ROOT.mkdir(mode=0o711, exist_ok=True)
        SCOPE = CgroupScope(f"sandbank-test-{os.getpid()}")
        SCOPE.enter()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SCOPE is not None:
        SCOPE.leave()
    with contextlib.suppress(OSError):
        RUN_ROOT.rmdir()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    if not is_root():
        pytest.skip("the real server needs root")
    srv = new_server("e2e")
    srv.start()
    yield srv
    srv.stop()
    srv.purge()


@pytest.fixture
def client_env(server: ServerProcess) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SANDBANK_URL": server.url, "SANDBANK_API_KEY": server.api_key})
    return env


@pytest.fixture(autouse=True, scope="module")
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each module, nothing of a deleted sandbox may remain on the host."""
    yield
    if not is_root() or not RUN_ROOT.exists():
        return
    # The session server may still be up; every sandbox a module made must be gone.
    found = leftovers(RUN_ROOT, run_cgroups())
    assert not found, f"{request.module.__name__} left behind: {found}"
