"""The fake runtime's templates: recipe names given at construction, plus
templates "captured" from fake sandboxes and "imported" images, and aliases,
all in memory (the executable spec of the template half of the contract)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

from sandbank.errors import InvalidState, SnapshotNotFound, TemplateNotFound, ValidationFailed
from sandbank.runtime.base import TemplateInfo


class FakeTemplates:
    template_names: tuple[str, ...]
    #: Snapshot id -> (files, dirs) (the runtime's snapshots).
    snapshots: dict[str, tuple[dict[str, bytes], set[str]]]

    def __init__(self) -> None:
        self.built: dict[str, TemplateInfo] = {}
        self.aliases: dict[str, str] = {}
        #: Template name -> how many fake sandboxes use it (set by the runtime).
        self.in_use: dict[str, int] = {}

    def _names(self) -> list[str]:
        return sorted({*self.template_names, *self.built})

    def _info(self, name: str) -> TemplateInfo:
        info = self.built.get(name) or TemplateInfo(name=name, ready=True)
        aliases = tuple(sorted(a for a, t in self.aliases.items() if t == name))
        return dataclasses.replace(info, aliases=aliases)

    async def ensure_template(
        self, name: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        return await self.template(name)

    async def templates(self) -> list[TemplateInfo]:
        return [self._info(n) for n in self._names()]

    async def template(self, name: str) -> TemplateInfo:
        name = self.aliases.get(name, name)
        if name not in self._names():
            raise TemplateNotFound(
                f"template {name!r} does not exist; available: {', '.join(self._names())}",
                templates=self._names(),
            )
        return self._info(name)

    async def capture_template(self, sandbox_id: str, info: TemplateInfo) -> TemplateInfo:
        if info.base is None or info.base not in self._names():
            raise InvalidState(f"base template {info.base!r} does not exist")
        self.built[info.name] = dataclasses.replace(
            info, ready=True, kind="built", built_at=time.time()
        )
        return self._info(info.name)

    async def template_from_snapshot(self, snapshot_id: str, info: TemplateInfo) -> TemplateInfo:
        if snapshot_id not in self.snapshots:
            raise SnapshotNotFound(f"snapshot {snapshot_id} has no files")
        if info.base is None or info.base not in self._names():
            raise InvalidState(f"base template {info.base!r} does not exist")
        self.built[info.name] = dataclasses.replace(
            info, ready=True, kind="snapshot", built_at=time.time()
        )
        return self._info(info.name)

    async def import_template(
        self, name: str, archive: str, on_progress: Callable[[str], None] | None = None
    ) -> TemplateInfo:
        if not archive.endswith(".tar"):
            raise ValidationFailed(f"{archive} is not an image archive", field="path")
        digest = hashlib.sha256(archive.encode()).hexdigest()
        self.built[name] = TemplateInfo(name=name, ready=True, kind="image", recipe_hash=digest)
        return self._info(name)

    async def delete_template(self, name: str) -> None:
        if (await self.template(name)).name != name:
            raise InvalidState(f"{name!r} is an alias; delete the template by its name")
        if name in self.template_names:
            raise InvalidState(f"template {name!r} is built from a recipe and cannot be deleted")
        if self.in_use.get(name):
            raise InvalidState(f"template {name!r} is in use by running sandboxes")
        del self.built[name]
        self.aliases = {a: t for a, t in self.aliases.items() if t != name}

    async def alias_template(self, name: str, alias: str) -> TemplateInfo:
        target = (await self.template(name)).name
        if alias in self._names():
            raise InvalidState(f"{alias!r} is the name of a template, not a free alias")
        self.aliases[alias] = target
        return self._info(target)

    async def unalias_template(self, name: str, alias: str) -> None:
        target = (await self.template(name)).name
        if self.aliases.get(alias) != target:
            raise TemplateNotFound(f"template {target!r} has no alias {alias!r}")
        del self.aliases[alias]
