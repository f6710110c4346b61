"""create_app: the only place that chooses and wires the parts."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from sandbank.runtime.base import Runtime
from sandbank.server.api import (
    admin,
    checkpoints,
    errors,
    exec_ws,
    files,
    files_tree,
    lifecycle,
    preview,
    processes,
    sandboxes,
    snapshots,
    system,
    templates,
    terminal_page,
    terminals,
)
from sandbank.server.api.deps import Services
from sandbank.server.service.deadlines import DeadlineSweeper
from sandbank.server.service.keys import DEFAULT_TENANT, KeyService
from sandbank.server.service.policy import Limits, Quota
from sandbank.server.service.pool import PoolConfig
from sandbank.server.service.preview import PreviewGate
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.service.template_build import BuildDefaults
from sandbank.server.service.templates import TemplateService
from sandbank.server.service.terminals import TerminalService
from sandbank.server.settings import Settings
from sandbank.server.store.base import Store
from sandbank.server.store.sql import SqlStore

log = logging.getLogger("sandbank")

ADMIN_KEY_FILE = "admin.key"
#: The key preview tokens are signed with.
PREVIEW_KEY_FILE = "preview.key"
#: The key terminal tokens are signed with.
TERMINAL_KEY_FILE = "terminal.key"


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime == "fake":
        from sandbank.runtime.fake import FakeRuntime

        return FakeRuntime()
    from sandbank.runtime.linux.driver import LinuxRuntime

    return LinuxRuntime.from_settings(settings)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        vcpu_min=settings.vcpu_min,
        vcpu_max=settings.vcpu_max,
        vcpu_default=settings.vcpu_default,
        memory_mb_min=settings.memory_mb_min,
        memory_mb_max=settings.memory_mb_max,
        memory_mb_default=settings.memory_mb_default,
        disk_gb_min=settings.disk_gb_min,
        disk_gb_max=settings.disk_gb_max,
        disk_gb_default=settings.disk_gb_default,
        regions=tuple(settings.regions),
        default_region=settings.default_region,
        default_timeout=settings.default_timeout,
        max_timeout=settings.max_timeout,
        exec_timeout_max=settings.exec_timeout_max,
        pids_limit=settings.pids_limit,
        exec_max_output=settings.exec_max_output,
        process_max_output=settings.process_max_output,
    )


async def bootstrap_admin_key(keys: KeyService, settings: Settings) -> None:
    """On a first start with no admin key configured, issue one and leave it
    (mode 0600) in the data dir so the local operator can pick it up."""
    if settings.api_key or await keys.has_admin_key():
        return
    _, key = await keys.create(DEFAULT_TENANT, name="bootstrap admin", admin=True)
    path = Path(settings.data_dir) / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    log.warning("created an admin API key; it is in %s", path)


def create_app(
    settings: Settings, runtime: Runtime | None = None, store: Store | None = None
) -> FastAPI:
    runtime = runtime or make_runtime(settings)
    store = store or SqlStore(settings.db_url)
    telemetry = Telemetry()
    keys = KeyService(store, utcnow, settings.api_key)
    service = SandboxService(
        store,
        runtime,
        limits_of(settings),
        Quota(
            max_sandboxes=settings.quota_max_sandboxes,
            max_vcpu=settings.quota_max_vcpu,
            max_memory_mb=settings.quota_max_memory_mb,
        ),
        utcnow,
        telemetry,
        pool=PoolConfig(
            size=settings.pool_size,
            templates=tuple(settings.pool_templates),
            refill_delay=settings.pool_refill_delay,
        ),
    )
    sweeper = DeadlineSweeper(service, settings.sweep_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        await store.open()
        await runtime.start()
        await bootstrap_admin_key(keys, settings)
        report = await service.reconcile()
        if any(report.values()):
            log.info("reconciled with the host: %s", report)
        sweeper.start()
        service.pool.start()
        try:
            yield
        finally:
            # Pooled sandboxes keep running: the next start adopts them.
            await service.pool.stop()
            await sweeper.stop()
            await service.idle.flush(force=True)
            await runtime.close()
            await store.close()

    app = FastAPI(title="sandbank", version="0.1.0", lifespan=lifespan)
    app.state.services = Services(
        sandboxes=service,
        keys=keys,
        telemetry=telemetry,
        base_url=settings.base_url,
        preview=PreviewGate(
            store, runtime, Path(settings.data_dir) / PREVIEW_KEY_FILE, touch=service.idle.touch
        ),
        templates=TemplateService(
            runtime,
            store,
            BuildDefaults(
                apt_sources=tuple(settings.template_build_apt_sources),
                pip_index=settings.template_build_pip_index,
                disk_gb=settings.template_build_disk_gb,
            ),
            scratch=Path(settings.data_dir) / "uploads",
        ),
        terminals=TerminalService(service, store, Path(settings.data_dir) / TERMINAL_KEY_FILE),
    )
    app.add_middleware(preview.PreviewHosts)
    errors.install(app)
    for module in (
        system,
        sandboxes,
        checkpoints,
        lifecycle,
        snapshots,
        processes,
        exec_ws,
        files,
        files_tree,
        admin,
        preview,
        templates,
    ):
        app.include_router(module.router)
    app.include_router(terminals.router)
    app.include_router(terminal_page.router)
    return app
