"""click kinds and popular limit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "kind",
                sa.Enum("human", "scanner", "bot", name="clickkind", native_enum=False, length=20),
                nullable=True,
            )
        )

    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("popular_limit", sa.Integer(), server_default="5", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.drop_column("popular_limit")

    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.drop_column("kind")
