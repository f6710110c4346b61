"""A template from a snapshot: what a sandbox wrote, frozen as a template.

The snapshot's writable layer becomes a template layer stacked on the
snapshot's own template (the runtime copies it out of the snapshot's disk),
so sandboxes of the new template start with the snapshot's files and its
deletions, and cost what sandboxes of the base cost. The template takes the
base's settings (variables, start and ready commands, user, workdir).

Templates are shared by every tenant, so making one needs an admin key (the
API checks), and the snapshot must be the caller's own tenant's: another
tenant's is 'not found', as everywhere. The content hash is the snapshot's
id (a snapshot never changes) with its base's hash: asking again for the
same snapshot under the same name finds the template made (``cached``);
a name taken by any other template is a Conflict, never replaced.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING

from sandbank.errors import Conflict, SnapshotNotFound
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.templates.catalog import check_alias, check_name
from sandbank.server.store.base import SnapshotRecord

if TYPE_CHECKING:
    from sandbank.server.service.templates import TemplateService

log = logging.getLogger(__name__)

#: Bumped when the way a snapshot becomes a template changes what it produces.
FORMAT = 1


def snapshot_digest(snapshot: SnapshotRecord, base: TemplateInfo) -> str:
    body = {"format": FORMAT, "snapshot": snapshot.id, "base": [base.name, base.recipe_hash]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def find_snapshot(templates: TemplateService, tenant: str, ref: str) -> SnapshotRecord:
    """By id, else by name, of ``tenant``'s snapshots only."""
    store = templates._store
    found = await store.get_snapshot(ref)
    if found is None or found.tenant != tenant:
        found = await store.snapshot_by_name(tenant, ref)
    if found is None:
        raise SnapshotNotFound(f"snapshot {ref} does not exist", snapshot=ref)
    return found


def _config(name: str, base: TemplateInfo, digest: str) -> TemplateInfo:
    return TemplateInfo(
        name=name,
        ready=True,
        recipe_hash=digest,
        kind="snapshot",
        base=base.name,
        env=dict(base.env),
        start_cmd=base.start_cmd,
        ready_cmd=base.ready_cmd,
        ready_timeout=base.ready_timeout,
        workdir=base.workdir,
        user=base.user,
        cmd=base.cmd,
    )


async def make(
    templates: TemplateService,
    tenant: str,
    name: str,
    ref: str,
    aliases: tuple[str, ...] = (),
) -> tuple[TemplateInfo, bool]:
    """Template ``name`` from snapshot ``ref``; (its info, True if it was there already)."""
    check_name(name)
    for alias in aliases:
        check_alias(alias)
    runtime = templates._runtime
    snapshot = await find_snapshot(templates, tenant, ref)
    base = await runtime.template(snapshot.template)
    async with templates._locks.setdefault(name, asyncio.Lock()):
        digest = snapshot_digest(snapshot, base)
        existing = {t.name: t for t in await runtime.templates()}.get(name)
        cached = existing is not None and existing.recipe_hash == digest
        if existing is not None and not cached:
            raise Conflict(
                f"template {name!r} exists already; pick another name or delete it first",
                template=name,
            )
        if existing is not None:
            info = existing
        else:
            info = await runtime.template_from_snapshot(snapshot.id, _config(name, base, digest))
            log.info("template %s made from snapshot %s on %s", name, snapshot.id, base.name)
    for alias in aliases:
        info = await runtime.alias_template(name, alias)
    return info, cached
