"""Snapshots that hold a sandbox's processes and memory too.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Snapshots taken before this are of disks only.
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("memory", sa.Boolean, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("memory")
