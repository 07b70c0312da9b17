"""claim in id order: the deliveries index ends with the id

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A batch's claim reads an edition's first queued rows in id order: with the id in the
    # index it stops after a batch of them instead of sorting every queued row of the edition.
    if op.get_bind().dialect.name == "postgresql":
        # Built without blocking writes: the running version goes on sending meanwhile.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_deliveries_edition_state_id",
                "deliveries",
                ["edition_id", "state", "id"],
                postgresql_concurrently=True,
            )
            op.drop_index(
                "ix_deliveries_edition_state", table_name="deliveries", postgresql_concurrently=True
            )
        return
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_edition_state_id", ["edition_id", "state", "id"], unique=False
        )
        batch_op.drop_index("ix_deliveries_edition_state")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_edition_state", ["edition_id", "state"], unique=False)
        batch_op.drop_index("ix_deliveries_edition_state_id")
