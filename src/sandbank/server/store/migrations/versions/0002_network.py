"""Sandboxes keep their egress policy.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server default: rows of sandboxes made before this have the default policy.
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("network", sa.JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("network")
