"""Snapshots of sandboxes' disks, and each sandbox's idle policy.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults: sandboxes made before this have no idle timeout.
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("idle_timeout", sa.Integer, nullable=True))
        batch.add_column(
            sa.Column("on_timeout", sa.String(16), nullable=False, server_default="kill")
        )
        batch.add_column(
            sa.Column("auto_resume", sa.Boolean, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "snapshots",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(64), nullable=False, index=True),
        sa.Column("template", sa.String(128), nullable=False),
        sa.Column("disk_gb", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_snapshots_tenant_name"),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    with op.batch_alter_table("sandboxes") as batch:
        for column in ("last_activity_at", "auto_resume", "on_timeout", "idle_timeout"):
            batch.drop_column(column)
