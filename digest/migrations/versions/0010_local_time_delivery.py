"""local-time delivery: a newsletter's local send hour, a delivery's earliest moment

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("local_send_hour", sa.Integer(), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("not_before")
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.drop_column("local_send_hour")
