"""personalised editions: segments (the sent-stories ledger), section quotas, thin days,
locale, editor-written subject and intro

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edition_segments",
        sa.Column("id", BigId, nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name=op.f("fk_edition_segments_edition_id_editions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edition_segments")),
        sa.UniqueConstraint("edition_id", "key", name=op.f("uq_edition_segments_edition_id")),
    )
    op.create_table(
        "segment_stories",
        sa.Column("segment_id", BigId, nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["edition_segments.id"],
            name=op.f("fk_segment_stories_segment_id_edition_segments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["story_id"],
            ["stories.id"],
            name=op.f("fk_segment_stories_story_id_stories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", "story_id", name=op.f("pk_segment_stories")),
    )
    op.create_index(
        op.f("ix_segment_stories_story_id"), "segment_stories", ["story_id"], unique=False
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segment_id", BigId, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_deliveries_segment_id_edition_segments"),
            "edition_segments",
            ["segment_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_deliveries_subscriber_id", ["subscriber_id"], unique=False)
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("intro", sa.Text(), server_default="", nullable=False))
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("section_quota", sa.Integer(), server_default="4", nullable=False)
        )
        batch_op.add_column(
            sa.Column("min_items", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(
            sa.Column("locale", sa.String(length=35), server_default="en", nullable=False)
        )
        batch_op.add_column(
            sa.Column("subject_template", sa.Text(), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("intro_template", sa.Text(), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        for column in (
            "intro_template",
            "subject_template",
            "locale",
            "min_items",
            "section_quota",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.drop_column("intro")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_subscriber_id")
        batch_op.drop_constraint(
            batch_op.f("fk_deliveries_segment_id_edition_segments"), type_="foreignkey"
        )
        batch_op.drop_column("segment_id")
    op.drop_index(op.f("ix_segment_stories_story_id"), table_name="segment_stories")
    op.drop_table("segment_stories")
    op.drop_table("edition_segments")
