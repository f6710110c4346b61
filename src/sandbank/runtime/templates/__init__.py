"""Built templates on disk, and building them once.

    <template_root>/<name>/
        current -> <hash16>          symlink, swapped atomically after a build
        <hash16>/rootfs/             the shifted tree (overlay lower layer)
        <hash16>/meta.json           name, recipe hash, size
        .build-*/                    a build in progress (removed if abandoned)
        .lock                        flock: one builder across processes

A rebuild (the recipe changed) lands in a new ``<hash16>`` directory, so
sandboxes still running on the old tree keep their lower layer; old trees
are removed once no mount and no other template uses them.

Templates built from a spec or imported from an image live the same way;
a built one's ``rootfs`` is only its own layer, stacked over the trees its
``meta.json`` lists under ``lowers`` (its base's, at build time). Aliases
are ``<template_root>/aliases.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sandbank.errors import InvalidState, TemplateNotFound
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.templates import catalog
from sandbank.runtime.templates.base import build_rootfs
from sandbank.runtime.templates.recipe import RECIPES, Recipe

Progress = Callable[[str], None]
#: What a file was when last read: inode, mtime, size (None: absent).
FileStamp = tuple[int, int, int] | None


def _file_stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _tree_size(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


async def _settle(work: Path, final: Path) -> None:
    """Move the finished tree ``work`` to ``final``, unless the same content is
    there already (current, or an earlier version sandboxes may still run on):
    then that tree stays, never replaced under a mount, and ``work`` goes."""
    if (final / "meta.json").is_file():
        await asyncio.to_thread(shutil.rmtree, work)
        return
    if final.exists():  # no meta.json: a copy cut short, which nothing mounts
        await asyncio.to_thread(shutil.rmtree, final)
    os.rename(work, final)


class TemplateStore:
    def __init__(
        self,
        root: Path,
        *,
        mirror: str | None = None,
        seed: Path | None = None,
        recipes: dict[str, Recipe] | None = None,
    ) -> None:
        self.root = root
        self.mirror = mirror
        self.seed = seed
        self.recipes = RECIPES if recipes is None else recipes
        self._locks: dict[str, asyncio.Lock] = {}
        self.aliases = catalog.Aliases(root / "aliases.json")
        #: ``lookup`` answers by name, with the stamps of the files they came from.
        self._looked_up: dict[str, tuple[tuple[object, ...], TemplateInfo]] = {}

    # -- reading -------------------------------------------------------------

    def _meta(self, name: str) -> dict[str, object] | None:
        current = self.root / name / "current"
        try:
            data = json.loads((current / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not (current / "rootfs").is_dir() or not isinstance(data, dict):
            return None
        return data

    def names(self) -> list[str]:
        built = {p.parent.name for p in self.root.glob("*/current") if p.exists()}
        return sorted(built | set(self.recipes))

    def info(self, name: str) -> TemplateInfo:
        meta = self._meta(name)
        recipe = self.recipes.get(name)
        if meta is None:
            digest = recipe.digest() if recipe else None
            return TemplateInfo(
                name=name, ready=False, recipe_hash=digest, aliases=self.aliases.of(name)
            )
        built_hash = str(meta.get("recipe_hash") or "") or None
        return catalog.info_of(
            name,
            meta,
            # A template with no recipe here was put in place by hand: ready as it is.
            ready=recipe is None or built_hash == recipe.digest(),
            aliases=self.aliases.of(name),
        )

    def lookup(self, name: str) -> TemplateInfo:
        """``info(resolve(name))``, remembered while the files it read stay the
        same: reading them costs about 0.5 ms, a create from the warm pool 2 ms.
        Builds, deletes and alias changes replace ``current/meta.json`` or
        ``aliases.json`` (new inode), here or in another process sharing the
        root, so a changed stamp sees them; so does a changed recipe (whether the
        tree is ready). Aliases are not remembered."""
        stamp = (_file_stamp(self.root / name / "current" / "meta.json"),
                 _file_stamp(self.aliases.path), self.recipes.get(name))  # fmt: skip
        hit = self._looked_up.get(name)
        if hit is not None and hit[0] == stamp:
            info = hit[1]
        else:
            info = self.info(self.resolve(name))
            if info.name == name:
                self._looked_up[name] = (stamp, info)
        return dataclasses.replace(info, env=dict(info.env))

    def lower(self, name: str) -> Path:
        """The built tree sandboxes of ``name`` start from (resolved, version-specific)."""
        if self._meta(name) is None:
            raise TemplateNotFound(self._unknown(name, built_only=True))
        return (self.root / name / "current").resolve() / "rootfs"

    def lowers(self, name: str) -> list[Path]:
        """Every read-only tree of ``name``, topmost first (overlay ``lowerdir`` order)."""
        return [self.lower(name), *self._below(name)]

    def _below(self, name: str) -> list[Path]:
        """The trees a built template stacks on; stored relative to the template root."""
        below = (self._meta(name) or {}).get("lowers")
        return [self.root / str(p) for p in below] if isinstance(below, list) else []

    def resolve(self, name: str) -> str:
        """The template ``name`` denotes: itself, or the one an alias points at."""
        if name in self.names():
            return name
        target = self.aliases.get(name)
        if target is not None and target in self.names():
            return target
        raise TemplateNotFound(self._unknown(name), templates=self.names())

    def _unknown(self, name: str, built_only: bool = False) -> str:
        known = [n for n in self.names() if not built_only or self._meta(n) is not None]
        listed = ", ".join(known) or "none"
        what = "is not built" if built_only and name in self.names() else "does not exist"
        return f"template {name!r} {what}; available: {listed}"

    # -- templates made from sandboxes and images ------------------------------------

    async def install(
        self,
        name: str,
        fill: Callable[[Path], Awaitable[dict[str, object]]],
        progress: Progress | None = None,
    ) -> TemplateInfo:
        """Make template ``name`` from the tree ``fill`` writes at the path it is
        given (a fresh ``rootfs`` in a scratch dir it may use too); ``fill`` returns
        the ``meta.json`` fields, ``recipe_hash`` (the content hash) among them.
        Nothing of a failed fill is left behind."""
        catalog.check_name(name)
        if name in self.recipes:
            raise InvalidState(f"template {name!r} is built from a recipe; choose another name")
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        # Left by a server that died mid-copy (callers serialize installs of a name).
        for stale in base.glob(".build-*"):
            await asyncio.to_thread(shutil.rmtree, stale, True)
        work = base / f".build-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            meta = await fill(work / "rootfs")
            digest = str(meta["recipe_hash"])
            size = await asyncio.to_thread(_tree_size, work / "rootfs")
            meta = {**meta, "name": name, "size_bytes": size}
            meta.setdefault("built_at", time.time())
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            final = base / digest[:16]
            await _settle(work, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            if not any(base.iterdir()):
                base.rmdir()
            raise
        self._make_current(base, final)
        if progress:
            progress(f"template {name!r} ready ({size // (1024 * 1024)} MiB)")
        return self.info(name)

    def delete(self, name: str) -> None:
        if self.resolve(name) != name:
            raise InvalidState(
                f"{name!r} is an alias of template {self.resolve(name)!r}: remove the alias "
                "(DELETE .../aliases/...) or delete the template by its name"
            )
        if name in self.recipes:
            raise InvalidState(f"template {name!r} is built from a recipe and cannot be deleted")
        base = self.root / name
        users = [n for n in self.names() if n != name and self._uses(n, base)]
        if users:
            raise InvalidState(
                f"template {name!r} is the base of {', '.join(users)}; delete those first",
                templates=users,
            )
        if f"{base}/" in Path("/proc/self/mounts").read_text():
            raise InvalidState(f"template {name!r} is in use by running sandboxes")
        self.aliases.drop_target(name)
        shutil.rmtree(base)

    def _uses(self, name: str, tree: Path) -> bool:
        return any(str(p).startswith(f"{tree}/") for p in self._below(name))

    def alias(self, name: str, alias: str) -> TemplateInfo:
        target = self.resolve(name)
        catalog.check_alias(alias)
        if alias in self.names():
            raise InvalidState(f"{alias!r} is the name of a template, not a free alias")
        self.aliases.set(alias, target)
        return self.info(target)

    def unalias(self, name: str, alias: str) -> None:
        target = self.resolve(name)
        if self.aliases.get(alias) != target:
            raise TemplateNotFound(f"template {target!r} has no alias {alias!r}")
        self.aliases.drop(alias)

    # -- building ------------------------------------------------------------

    async def ensure(self, name: str, on_progress: Progress | None = None) -> TemplateInfo:
        recipe = self.recipes.get(name)
        if recipe is None:
            if self._meta(name) is not None:
                return self.info(name)
            raise TemplateNotFound(self._unknown(name))
        progress = on_progress or (lambda _line: None)
        info = self.info(name)
        if info.ready:
            return info
        async with self._locks.setdefault(name, asyncio.Lock()):
            info = self.info(name)
            if info.ready:  # built by the caller we waited for
                return info
            lock_path = self.root / name / ".lock"
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Another process is building it: wait without blocking the loop.
                    progress(f"waiting for another build of {name!r}")
                    await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                info = self.info(name)
                if not info.ready:
                    await self._build(recipe, progress)
                    info = self.info(name)
            finally:
                os.close(fd)  # releases the flock
        return info

    async def _build(self, recipe: Recipe, progress: Progress) -> None:
        base = self.root / recipe.name
        for stale in base.glob(".build-*"):
            progress(f"removing abandoned build {stale.name}")
            await asyncio.to_thread(shutil.rmtree, stale, True)
        digest = recipe.digest()
        final = base / digest[:16]
        if (final / "meta.json").is_file():
            # Built before and kept (sandboxes still run on it, or another template
            # stacks on it): that tree is this recipe's; make it current again.
            progress(f"template {recipe.name!r} of this recipe is on disk already")
            self._make_current(base, final)
            return
        work = base / f".build-{secrets.token_hex(4)}"
        work.mkdir(parents=True)
        try:
            started = time.monotonic()
            await build_rootfs(
                recipe, work / "rootfs", mirror=self.mirror, seed=self.seed, progress=progress
            )
            size = await asyncio.to_thread(_tree_size, work / "rootfs")
            meta = {
                "name": recipe.name,
                "recipe_hash": digest,
                "size_bytes": size,
                "built_at": time.time(),
                "build_seconds": round(time.monotonic() - started, 1),
                "seeded": self.seed is not None,
            }
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            await _settle(work, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        self._make_current(base, final)
        progress(f"template {recipe.name!r} ready ({size // (1024 * 1024)} MiB)")

    def _make_current(self, base: Path, final: Path) -> None:
        link = base / f".current-{secrets.token_hex(4)}"
        os.symlink(final.name, link)
        os.replace(link, base / "current")
        self._prune(base, keep=final.name)

    def _prune(self, base: Path, keep: str) -> None:
        """Remove old trees no mount and no other template still uses as a lower layer."""
        mounts = Path("/proc/self/mounts").read_text()
        for old in base.iterdir():
            if old.name == keep or old.name.startswith(".") or old.is_symlink():
                continue
            used = any(self._uses(n, old) for n in self.names())
            if f"{old}/rootfs" not in mounts and not used:
                shutil.rmtree(old, ignore_errors=True)
