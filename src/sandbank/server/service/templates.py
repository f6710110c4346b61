"""Templates: listing, building from a spec, importing images, aliases, deletion.

A build checks everything it can before it starts (name, base, spec), so that
those errors are plain 4xx answers; then ``run_build`` does the work, telling
the caller what happens through ``emit`` (the API streams it as NDJSON). A
build whose content hash (spec + base + build settings) matches the template
already there is a cache hit: no sandbox is started.

The build sandbox is a real sandbox of the base with the default network
policy, known only to the runtime (no store record, no tenant quota): a
server restart finds it without a record and removes it, like any leftover.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sandbank.errors import InvalidState, PayloadTooLarge, ValidationFailed
from sandbank.protocol.templates import ReadySpec, StartSpec, TemplateSpec
from sandbank.runtime.base import Runtime, SandboxSpec, TemplateInfo
from sandbank.runtime.templates.catalog import check_alias, check_name
from sandbank.server.service import template_snapshot
from sandbank.server.service.lifecycle import SandboxState
from sandbank.server.service.template_build import (
    BuildDefaults,
    Emit,
    plan_steps,
    run_steps,
    spec_digest,
)
from sandbank.server.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildPlan:
    name: str
    spec: TemplateSpec
    base: TemplateInfo
    digest: str
    aliases: tuple[str, ...]
    #: The template ``name`` already is this build's result.
    cached: TemplateInfo | None


def _config(name: str, spec: TemplateSpec, base: TemplateInfo, digest: str) -> TemplateInfo:
    start = StartSpec(cmd=spec.start) if isinstance(spec.start, str) else spec.start
    ready = ReadySpec(cmd=spec.ready) if isinstance(spec.ready, str) else spec.ready
    return TemplateInfo(
        name=name,
        ready=True,
        recipe_hash=digest,
        kind="built",
        base=base.name,
        # The base's variables (an image's PATH, say) carry on under the spec's own.
        env={**base.env, **spec.env},
        start_cmd=start.cmd if start else None,
        ready_cmd=ready.cmd if ready else None,
        ready_timeout=ready.timeout if ready else 60.0,
        workdir=spec.workdir or base.workdir,
        user=start.user if start else base.user,
    )


class TemplateService:
    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        defaults: BuildDefaults | None = None,
        clock: Callable[[], float] = time.monotonic,
        scratch: Path | None = None,
        max_upload: int = 16 * 2**30,
    ) -> None:
        """``scratch``: where uploaded image archives wait for their import."""
        self._runtime = runtime
        self._store = store
        self._scratch = scratch
        self.max_upload = max_upload
        self.defaults = defaults or BuildDefaults()
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        #: One build at a time: each takes a sandbox with the host's CPUs.
        self._slots = asyncio.Semaphore(1)

    async def list(self) -> list[TemplateInfo]:
        return await self._runtime.templates()

    async def get(self, name: str) -> TemplateInfo:
        return await self._runtime.template(name)

    async def delete(self, name: str) -> None:
        """Refused (InvalidState, 409) while a sandbox in any state but killed or
        error was made from it: a stopped one comes back on the same tree. The
        runtime refuses too while the tree is mounted or is another's base."""
        if (await self._runtime.template(name)).name != name:
            await self._runtime.delete_template(name)  # refuses aliases, saying why
        live = [s for s in SandboxState if s not in (SandboxState.KILLED, SandboxState.ERROR)]
        page = await self._store.list_sandboxes(tenant=None, statuses=live, template=name, limit=5)
        if page.items:
            ids = ", ".join(r.id for r in page.items)
            raise InvalidState(
                f"template {name!r} is in use by sandboxes ({ids}); kill them first",
                sandboxes=[r.id for r in page.items],
            )
        await self._runtime.delete_template(name)

    async def alias(self, name: str, alias: str) -> TemplateInfo:
        check_alias(alias)
        return await self._runtime.alias_template(name, alias)

    async def unalias(self, name: str, alias: str) -> None:
        await self._runtime.unalias_template(name, alias)

    async def import_image(
        self, name: str, path: str, aliases: tuple[str, ...] = ()
    ) -> TemplateInfo:
        check_name(name)
        for alias in aliases:
            check_alias(alias)
        async with self._locks.setdefault(name, asyncio.Lock()):
            info = await self._runtime.import_template(name, path)
        for alias in aliases:
            info = await self._runtime.alias_template(name, alias)
        return info

    async def import_upload(
        self, name: str, chunks: AsyncIterator[bytes], aliases: tuple[str, ...] = ()
    ) -> TemplateInfo:
        """Like ``import_image``, for an archive sent in the request body: kept in
        the scratch dir for the import only."""
        check_name(name)
        if self._scratch is None:
            raise ValidationFailed("this server takes no uploaded images; give a path instead")
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        archive = self._scratch / f"upload-{secrets.token_hex(6)}.tar"
        try:
            size = 0
            with open(archive, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload:
                        raise PayloadTooLarge(
                            f"image archives are limited to {self.max_upload} bytes"
                        )
                    await asyncio.to_thread(out.write, chunk)
            return await self.import_image(name, str(archive), aliases)
        finally:
            archive.unlink(missing_ok=True)

    async def from_snapshot(
        self, tenant: str, name: str, snapshot: str, aliases: tuple[str, ...] = ()
    ) -> tuple[TemplateInfo, bool]:
        """Template ``name`` from ``tenant``'s snapshot (see template_snapshot)."""
        return await template_snapshot.make(self, tenant, name, snapshot, aliases)

    # -- building ------------------------------------------------------------------

    async def prepare_build(
        self, name: str, spec: TemplateSpec, aliases: tuple[str, ...] = ()
    ) -> BuildPlan:
        check_name(name)
        for alias in aliases:
            check_alias(alias)
        base = await self._runtime.template(spec.base)
        if base.name == name:
            raise ValidationFailed(
                f"template {name!r} cannot be built on itself; name another base", field="base"
            )
        base = await self._runtime.ensure_template(base.name)
        base = await self._runtime.template(base.name)
        digest = spec_digest(spec, base, self.defaults)
        existing = {t.name: t for t in await self._runtime.templates()}.get(name)
        cached = existing if existing is not None and existing.recipe_hash == digest else None
        return BuildPlan(name, spec, base, digest, aliases, cached)

    async def run_build(self, plan: BuildPlan, emit: Emit) -> tuple[TemplateInfo, bool]:
        """Build ``plan`` unless cached (then True); emits ``step`` and ``log`` events.
        A failure raises (TemplateBuildFailed for a failed step), leaving no template."""
        started = self._clock()
        async with self._locks.setdefault(plan.name, asyncio.Lock()):
            info = plan.cached or await self._find_cached(plan)
            cached = info is not None
            if info is None:
                async with self._slots:
                    info = await self._build(plan, emit)
        for alias in plan.aliases:
            info = await self._runtime.alias_template(plan.name, alias)
        log.info("template %s ready in %.1f s", plan.name, self._clock() - started)
        return info, cached

    async def _find_cached(self, plan: BuildPlan) -> TemplateInfo | None:
        """A build that finished while this one waited for the lock."""
        for info in await self._runtime.templates():
            if info.name == plan.name and info.recipe_hash == plan.digest:
                return info
        return None

    async def _build(self, plan: BuildPlan, emit: Emit) -> TemplateInfo:
        steps = plan_steps(plan.spec, self.defaults)
        sandbox_id = f"tbuild-{secrets.token_hex(6)}"
        spec = SandboxSpec(
            id=sandbox_id,
            template=plan.base.name,
            vcpu=self.defaults.vcpu,
            memory_mb=self.defaults.memory_mb,
            disk_gb=self.defaults.disk_gb,
            hostname="template-build",
            pids_limit=4096,
            env={**plan.base.env, **plan.spec.env},
        )
        emit({"type": "log", "step": 0, "stream": "stdout",
              "line": f"starting build sandbox {sandbox_id} from {plan.base.name!r}"})  # fmt: skip
        try:
            await self._runtime.create(spec)
            await run_steps(self._runtime.channel(sandbox_id), steps, emit)
            # Frozen while its layer is copied: nothing changes it half-way.
            await self._runtime.pause(sandbox_id)
            emit({"type": "log", "step": len(steps), "stream": "stdout",
                  "line": "capturing the build's layer"})  # fmt: skip
            return await self._runtime.capture_template(
                sandbox_id, _config(plan.name, plan.spec, plan.base, plan.digest)
            )
        finally:
            try:
                await asyncio.shield(self._runtime.destroy(sandbox_id))
            except Exception as exc:
                log.error("removing build sandbox %s: %s", sandbox_id, exc)
