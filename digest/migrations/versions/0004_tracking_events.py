"""tracking events: kinds, event keys, unsubscribes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_key", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_clicks_event_key"), ["event_key"])

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("opens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "kind",
                sa.Enum(
                    "human",
                    "prefetch",
                    "scanner",
                    "bot",
                    name="openkind",
                    native_enum=False,
                    length=20,
                ),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("event_key", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_opens_event_key"), ["event_key"])


def downgrade() -> None:
    with op.batch_alter_table("opens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_opens_event_key"), type_="unique")
        batch_op.drop_column("event_key")
        batch_op.drop_column("kind")

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("unsubscribed_at")

    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_clicks_event_key"), type_="unique")
        batch_op.drop_column("event_key")
