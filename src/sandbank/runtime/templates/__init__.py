"""Built templates on disk, and building them once.

    <template_root>/<name>/
        current -> <hash16>          symlink, swapped atomically after a build
        <hash16>/rootfs/             the shifted tree (overlay lower layer)
        <hash16>/meta.json           name, recipe hash, size
        .build-*/                    a build in progress (removed if abandoned)
        .lock                        flock: one builder across processes

A rebuild (the recipe changed) lands in a new ``<hash16>`` directory, so
sandboxes still running on the old tree keep their lower layer; old trees
are removed once no mount uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sandbank.errors import TemplateNotFound
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.templates.base import build_rootfs
from sandbank.runtime.templates.recipe import RECIPES, Recipe

Progress = Callable[[str], None]


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
        built = {p.parent.name for p in self.root.glob("*/current")}
        return sorted(built | set(self.recipes))

    def info(self, name: str) -> TemplateInfo:
        meta = self._meta(name)
        recipe = self.recipes.get(name)
        if meta is None:
            digest = recipe.digest() if recipe else None
            return TemplateInfo(name=name, ready=False, recipe_hash=digest)
        built_hash = str(meta.get("recipe_hash") or "") or None
        size = meta.get("size_bytes")
        return TemplateInfo(
            name=name,
            # A template with no recipe here was put in place by hand: ready as it is.
            ready=recipe is None or built_hash == recipe.digest(),
            recipe_hash=built_hash,
            size_bytes=size if isinstance(size, int) else None,
        )

    def lower(self, name: str) -> Path:
        """The built tree sandboxes of ``name`` start from (resolved, version-specific)."""
        if self._meta(name) is None:
            raise TemplateNotFound(self._unknown(name, built_only=True))
        return (self.root / name / "current").resolve() / "rootfs"

    def _unknown(self, name: str, built_only: bool = False) -> str:
        known = [n for n in self.names() if not built_only or self._meta(n) is not None]
        listed = ", ".join(known) or "none"
        what = "is not built" if built_only and name in self.names() else "does not exist"
        return f"template {name!r} {what}; available: {listed}"

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
            final = base / digest[:16]
            if final.exists():
                await asyncio.to_thread(shutil.rmtree, final)
            os.rename(work, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        link = base / f".current-{secrets.token_hex(4)}"
        os.symlink(final.name, link)
        os.replace(link, base / "current")
        progress(f"template {recipe.name!r} ready ({size // (1024 * 1024)} MiB)")
        self._prune(base, keep=final.name)

    def _prune(self, base: Path, keep: str) -> None:
        """Remove old trees no mount still uses as a lower layer."""
        mounts = Path("/proc/self/mounts").read_text()
        for old in base.iterdir():
            if old.name == keep or old.name.startswith(".") or old.is_symlink():
                continue
            if f"{old}/rootfs" not in mounts:
                shutil.rmtree(old, ignore_errors=True)
