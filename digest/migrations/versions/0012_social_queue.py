"""social queue: account settings and posting state, evergreen stories

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("social_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("base_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(
            sa.Column("slots", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("daily_cap", sa.Integer(), nullable=False, server_default="6")
        )
        batch_op.add_column(
            sa.Column("approval", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("expiry_minutes", sa.Integer(), nullable=False, server_default="120")
        )
        batch_op.add_column(sa.Column("reshare_days", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "utm_campaign", sa.String(length=100), nullable=False, server_default="social"
            )
        )
        batch_op.add_column(sa.Column("max_characters", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("status", sa.String(length=20), nullable=False, server_default="active")
        )
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_slot_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("active_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("social_posts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=20), nullable=False, server_default="latest")
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("verify", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("share_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_social_posts_state"), ["state", "scheduled_for"], unique=False
        )
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("evergreen", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.drop_column("evergreen")
    with op.batch_alter_table("social_posts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_social_posts_state"))
        for column in (
            "approved_at",
            "url",
            "share_url",
            "verify",
            "lease_until",
            "next_attempt_at",
            "attempts",
            "kind",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("social_accounts", schema=None) as batch_op:
        for column in (
            "active_since",
            "last_slot_at",
            "retry_at",
            "status_reason",
            "status",
            "max_characters",
            "utm_campaign",
            "reshare_days",
            "expiry_minutes",
            "approval",
            "daily_cap",
            "slots",
            "base_url",
        ):
            batch_op.drop_column(column)
