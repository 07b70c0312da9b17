"""social links

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "social_post_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.create_unique_constraint(batch_op.f("uq_links_social_post_id"), ["social_post_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_links_social_post_id_social_posts"),
            "social_posts",
            ["social_post_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_links_social_post_id_social_posts"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("uq_links_social_post_id"), type_="unique")
        batch_op.drop_column("social_post_id")
