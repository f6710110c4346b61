"""The Linux runtime's template operations beyond building recipes: capturing a
sandbox's layer, importing OCI images, aliases and deletion (the template store
does the work; this maps the Runtime protocol onto it)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sandbank.errors import InvalidState, RuntimeFailure
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.linux import snapshot_template, snapshots
from sandbank.runtime.linux.layout import SandboxDir
from sandbank.runtime.templates import TemplateStore, catalog, image, layer

if TYPE_CHECKING:
    from sandbank.runtime.linux.driver import LinuxRuntime


class TemplateOps:
    store: TemplateStore

    def _box(self, sandbox_id: str) -> SandboxDir:
        raise NotImplementedError

    async def template(self, name: str) -> TemplateInfo:
        return self.store.lookup(name)

    async def capture_template(self, sandbox_id: str, info: TemplateInfo) -> TemplateInfo:
        if info.base is None or not info.recipe_hash:
            raise InvalidState("a captured template needs its base and content hash")
        base = self.store.resolve(info.base)
        lowers = self.store.lowers(base)
        upper = self._box(sandbox_id).disk / "upper"
        if not upper.is_dir():
            raise InvalidState(f"sandbox {sandbox_id} has no writable layer to capture")
        started = time.monotonic()

        async def fill(rootfs: Path) -> dict[str, object]:
            await layer.copy_upper(upper, rootfs)
            return {
                "kind": "built",
                "base": base,
                "recipe_hash": info.recipe_hash,
                "lowers": [str(p.relative_to(self.store.root)) for p in lowers],
                "config": catalog.config_of(info),
                "capture_seconds": round(time.monotonic() - started, 2),
            }

        return await self.store.install(info.name, fill)

    async def template_from_snapshot(self, snapshot_id: str, info: TemplateInfo) -> TemplateInfo:
        disk_image = snapshots.image_of(cast("LinuxRuntime", self), snapshot_id)
        return await snapshot_template.install(self.store, disk_image, info)

    async def import_template(
        self, name: str, archive: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        catalog.check_name(name)
        for tool in ("skopeo", "umoci"):
            if shutil.which(tool) is None:
                raise RuntimeFailure(f"importing images needs {tool}: apt install {tool}")
        progress = on_progress or (lambda _line: None)

        async def fill(rootfs: Path) -> dict[str, object]:
            found = await image.unpack(Path(archive), rootfs.parent, rootfs, progress)
            return {
                "kind": "image",
                "recipe_hash": found["digest"],
                "image_digest": found["image_digest"],
                "config": found["config"],
            }

        return await self.store.install(name, fill, progress)

    async def delete_template(self, name: str) -> None:
        self.store.delete(name)

    async def alias_template(self, name: str, alias: str) -> TemplateInfo:
        return self.store.alias(name, alias)

    async def unalias_template(self, name: str, alias: str) -> None:
        self.store.unalias(name, alias)
