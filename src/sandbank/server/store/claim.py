"""The claim of a pooled sandbox and the quota check it is charged against, as
one transaction over a synchronous connection: the SQL store runs it either on
its asyncio engine (``run_sync``) or, for SQLite, on a thread of its own with a
plain driver connection, where a whole transaction costs one thread hop.

The statements are built once, with bound parameters: building them (and the
cache keys SQLAlchemy derives from a new statement) cost as much as running
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, update
from sqlalchemy.engine import Row

from sandbank.server.store.base import QuotaRecord, SandboxRecord, TenantUsage
from sandbank.server.store.tables import quotas, sandboxes

_SANDBOX_FIELDS = [f.name for f in fields(SandboxRecord)]


def sandbox_of(row: Row[Any]) -> SandboxRecord:
    data = row._mapping
    return SandboxRecord(**{name: data[name] for name in _SANDBOX_FIELDS})


def _quota_query(leave_out: bool) -> Select[Any]:
    tenant: Any = bindparam("q_tenant")

    def override(column: Any) -> Any:
        return select(column).where(quotas.c.tenant == tenant).scalar_subquery()

    stmt = select(
        func.count(sandboxes.c.seq),
        func.coalesce(func.sum(sandboxes.c.vcpu), 0.0),
        func.coalesce(func.sum(sandboxes.c.memory_mb), 0),
        override(quotas.c.max_sandboxes),
        override(quotas.c.max_vcpu),
        override(quotas.c.max_memory_mb),
    ).where(
        sandboxes.c.tenant == tenant,
        sandboxes.c.status.in_(bindparam("q_statuses", expanding=True)),
    )
    return stmt.where(sandboxes.c.id != bindparam("q_leave_out")) if leave_out else stmt


_QUOTA = _quota_query(leave_out=False)
_QUOTA_LEAVING_OUT = _quota_query(leave_out=True)

# The SET clause comes from the parameters of each execution (``changes``);
# the WHERE clause's parameters are prefixed so as not to clash with them.
_CLAIM = (
    update(sandboxes)
    .where(
        sandboxes.c.id
        == select(sandboxes.c.id)
        .where(
            sandboxes.c.tenant == bindparam("c_tenant"),
            sandboxes.c.status == bindparam("c_status"),
            sandboxes.c.template == bindparam("c_template"),
            sandboxes.c.disk_gb == bindparam("c_disk_gb"),
        )
        .order_by(sandboxes.c.seq)
        .limit(1)
        .scalar_subquery(),
        sandboxes.c.status == bindparam("c_status"),
    )
    .returning(*sandboxes.c)
)


def quota_query(
    tenant: str, statuses: Iterable[str], leave_out: str | None = None
) -> tuple[Select[Any], dict[str, Any]]:
    """The tenant's usage by sandboxes in ``statuses`` (but ``leave_out``) and
    its quota override, in one row: the statement and its parameters."""
    params: dict[str, Any] = {"q_tenant": tenant, "q_statuses": list(statuses)}
    if leave_out is None:
        return _QUOTA, params
    return _QUOTA_LEAVING_OUT, {**params, "q_leave_out": leave_out}


def quota_row(tenant: str, row: Sequence[Any]) -> tuple[QuotaRecord | None, TenantUsage]:
    count, vcpu, memory, *limits = row
    usage = TenantUsage(sandboxes=int(count), vcpu=float(vcpu), memory_mb=int(memory))
    if all(limit is None for limit in limits):
        return None, usage
    return QuotaRecord(tenant, *limits), usage


def claim_oldest(
    tenant: str,
    status: str,
    template: str,
    disk_gb: int,
    changes: Mapping[str, Any],
    charge: Callable[[QuotaRecord | None, TenantUsage], None],
    charge_statuses: list[str],
    conn: Connection,
) -> SandboxRecord | None:
    """``Store.claim_sandbox`` inside the caller's transaction (``charge``
    raising rolls it back). The write comes first: it takes SQLite's write lock
    (waiting for it), where a read first could not upgrade once another
    connection had written since."""
    where = {"c_tenant": tenant, "c_status": status, "c_template": template, "c_disk_gb": disk_gb}
    row = conn.execute(_CLAIM, {**changes, **where}).first()
    if row is None:
        return None
    claimed = sandbox_of(row)
    usage = conn.execute(*quota_query(claimed.tenant, charge_statuses, claimed.id)).one()
    charge(*quota_row(claimed.tenant, usage))
    return claimed
