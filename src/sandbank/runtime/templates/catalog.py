"""Template names, aliases, and what a template's ``meta.json`` says about it."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from sandbank.errors import ValidationFailed
from sandbank.runtime.base import TemplateInfo

#: Template names: also a directory name and part of overlay mount options.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
#: Aliases may carry a tag (``python:3.12``); a name never has a colon.
ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,127}$")


def check_name(name: str) -> None:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise ValidationFailed(
            f"template name {name!r} is invalid: 1-63 characters of a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit",
            field="name",
        )


def check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias):
        raise ValidationFailed(
            f"alias {alias!r} is invalid: 1-128 characters of a-z, 0-9, '.', '_', '-' "
            "and ':', starting with a letter or digit",
            field="alias",
        )


class Aliases:
    """alias -> template name, in one JSON file replaced atomically on change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self, table: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".aliases-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def get(self, alias: str) -> str | None:
        return self.load().get(alias)

    def of(self, name: str) -> tuple[str, ...]:
        return tuple(sorted(a for a, target in self.load().items() if target == name))

    def set(self, alias: str, name: str) -> None:
        self._save({**self.load(), alias: name})

    def drop(self, alias: str) -> None:
        table = self.load()
        if table.pop(alias, None) is not None:
            self._save(table)

    def drop_target(self, name: str) -> None:
        table = self.load()
        kept = {a: t for a, t in table.items() if t != name}
        if kept != table:
            self._save(kept)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def info_of(
    name: str, meta: dict[str, object], *, ready: bool, aliases: tuple[str, ...]
) -> TemplateInfo:
    config = meta.get("config")
    conf: dict[str, object] = config if isinstance(config, dict) else {}
    env = conf.get("env")
    size = meta.get("size_bytes")
    built_at = meta.get("built_at")
    timeout = conf.get("ready_timeout")
    return TemplateInfo(
        name=name,
        ready=ready,
        recipe_hash=_str(meta.get("recipe_hash")),
        size_bytes=size if isinstance(size, int) else None,
        kind=_str(meta.get("kind")) or "recipe",
        base=_str(meta.get("base")),
        aliases=aliases,
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        start_cmd=_str(conf.get("start_cmd")),
        ready_cmd=_str(conf.get("ready_cmd")),
        ready_timeout=float(timeout) if isinstance(timeout, int | float) else 60.0,
        workdir=_str(conf.get("workdir")),
        user=_str(conf.get("user")),
        built_at=float(built_at) if isinstance(built_at, int | float) else None,
        cmd=tuple(str(c) for c in cmd) if isinstance(cmd := conf.get("cmd"), list) else (),
    )


def config_of(info: TemplateInfo) -> dict[str, object]:
    """The part of ``meta.json`` that sandboxes of the template are started with."""
    return {
        "env": dict(info.env),
        "start_cmd": info.start_cmd,
        "ready_cmd": info.ready_cmd,
        "ready_timeout": info.ready_timeout,
        "workdir": info.workdir,
        "user": info.user,
        "cmd": list(info.cmd),
    }
