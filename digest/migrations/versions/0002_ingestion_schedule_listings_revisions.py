"""sources schedule, listings, pins, story revisions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "listings",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "latest", "must_read", "popular", name="sourcerole", native_enum=False, length=20
            ),
            nullable=False,
        ),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_listings_source_id_sources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["story_id"],
            ["stories.id"],
            name=op.f("fk_listings_story_id_stories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("source_id", "role", "story_id", name=op.f("pk_listings")),
    )
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_listings_story_id"), ["story_id"], unique=False)

    op.create_table(
        "story_revisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=30), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=False),
        sa.Column("new_value", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_story_revisions_source_id_sources"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["story_id"],
            ["stories.id"],
            name=op.f("fk_story_revisions_story_id_stories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_story_revisions")),
    )
    with op.batch_alter_table("story_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_story_revisions_story_id"), ["story_id"], unique=False)

    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("selectors", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("interval_seconds", sa.Integer(), nullable=False, server_default="900")
        )
        batch_op.add_column(sa.Column("next_fetch_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("etag", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("last_modified", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_sources_next_fetch_at"), ["next_fetch_at"], unique=False
        )

    # The ranks move from the story rows to per-source listings. Until the next fetch rewrites
    # them, existing ranks are kept under the first source that has that list.
    for role, column in (("must_read", "must_read_rank"), ("popular", "popular_rank")):
        op.execute(
            f"""
            INSERT INTO listings (source_id, role, story_id, rank)
            SELECT (SELECT min(id) FROM sources WHERE role = '{role}'), '{role}', id, {column}
            FROM stories
            WHERE {column} IS NOT NULL AND EXISTS (SELECT 1 FROM sources WHERE role = '{role}')
            """
        )
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_column("popular_rank")
        batch_op.drop_column("must_read_rank")


def downgrade() -> None:
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("must_read_rank", sa.INTEGER(), nullable=True))
        batch_op.add_column(sa.Column("popular_rank", sa.INTEGER(), nullable=True))
        batch_op.drop_column("pinned_until")
    for role, column in (("must_read", "must_read_rank"), ("popular", "popular_rank")):
        op.execute(
            f"""
            UPDATE stories SET {column} = (
                SELECT min(rank) FROM listings
                WHERE listings.story_id = stories.id AND listings.role = '{role}'
            )
            """
        )

    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sources_next_fetch_at"))
        batch_op.drop_column("last_success_at")
        batch_op.drop_column("last_modified")
        batch_op.drop_column("etag")
        batch_op.drop_column("next_fetch_at")
        batch_op.drop_column("interval_seconds")
        batch_op.drop_column("selectors")

    with op.batch_alter_table("story_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_story_revisions_story_id"))

    op.drop_table("story_revisions")
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_listings_story_id"))

    op.drop_table("listings")
