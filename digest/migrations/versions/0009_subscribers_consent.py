"""subscribers: preferences, confirmation, suppression list, consent log, bounces

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The consent log is append-only: the database refuses to change or remove an entry, whatever
# the code does.
_REFUSAL = "consent_events is append-only"
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER consent_events_no_{verb} BEFORE {verb.upper()} ON consent_events"
    f" BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
    for verb in ("update", "delete")
]
_POSTGRES_TRIGGER = [
    "CREATE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS"
    f" $$ BEGIN RAISE EXCEPTION '{_REFUSAL}'; END $$",
    "CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events"
    " FOR EACH ROW EXECUTE FUNCTION consent_events_append_only()",
]


def upgrade() -> None:
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reply_to", sa.String(length=320), nullable=True))
        batch_op.add_column(
            sa.Column("template", sa.String(length=100), server_default="digest", nullable=False)
        )
        batch_op.add_column(sa.Column("sections", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("weekly_day", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("consent_text", sa.Text(), server_default="", nullable=False))
    op.execute("UPDATE newsletters SET sections = '[]'")
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        batch_op.alter_column("sections", existing_type=sa.JSON(), nullable=False)

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sections", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("frequency", sa.String(length=20), server_default="daily", nullable=False)
        )
        batch_op.add_column(sa.Column("send_hour", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("paused_until", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("reengagement_sent_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("sunset_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("kept_at", sa.DateTime(timezone=True), nullable=True))
    # Subscriptions from before double opt-in were confirmed when they were made, and an
    # inactive one was unsubscribed (its time unknown: the latest it could be is not known
    # either, so its creation stands in); without this it would pass for a pending sign-up.
    op.execute("UPDATE subscriptions SET confirmed_at = created_at WHERE active")
    op.execute("UPDATE subscriptions SET unsubscribed_at = created_at WHERE NOT active")

    op.create_table(
        "suppressions",
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=30), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name=op.f("pk_suppressions")),
    )
    op.create_table(
        "consent_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("newsletter_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("source", sa.String(length=30), nullable=False),
        sa.Column("ip_prefix", sa.String(length=64), nullable=True),
        sa.Column("consent_version", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    op.create_index(
        op.f("ix_consent_events_address_hash"), "consent_events", ["address_hash"], unique=False
    )
    op.create_index(
        op.f("ix_consent_events_ip_prefix"), "consent_events", ["ip_prefix"], unique=False
    )
    bind = op.get_bind()
    for statement in _POSTGRES_TRIGGER if bind.dialect.name == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)

    op.create_table(
        "bounces",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("report_key", sa.String(length=64), nullable=False),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_bounces_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_bounces_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounces")),
        sa.UniqueConstraint("report_key", name=op.f("uq_bounces_report_key")),
    )
    op.create_index(op.f("ix_bounces_delivery_id"), "bounces", ["delivery_id"], unique=False)
    op.create_index(op.f("ix_bounces_subscriber_id"), "bounces", ["subscriber_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_bounces_subscriber_id"), table_name="bounces")
    op.drop_index(op.f("ix_bounces_delivery_id"), table_name="bounces")
    op.drop_table("bounces")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER consent_events_append_only ON consent_events")
        op.execute("DROP FUNCTION consent_events_append_only()")
    op.drop_index(op.f("ix_consent_events_ip_prefix"), table_name="consent_events")
    op.drop_index(op.f("ix_consent_events_address_hash"), table_name="consent_events")
    op.drop_table("consent_events")
    op.drop_table("suppressions")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        for column in (
            "kept_at", "sunset_at", "reengagement_sent_at", "paused_until", "send_hour",
            "frequency", "sections", "unsubscribed_at", "confirmed_at",
        ):  # fmt: skip
            batch_op.drop_column(column)
    with op.batch_alter_table("newsletters", schema=None) as batch_op:
        for column in ("consent_text", "weekly_day", "sections", "template", "reply_to"):
            batch_op.drop_column(column)
