"""The data model.

Invariants the database enforces rather than the code (DESIGN, rules 1 and 7):
- one delivery per (edition, subscriber) and one social post per (story, account, variant), both
  written before anything is sent, so a retried task or a duplicate tick cannot send twice;
- an edition's content is frozen into ``Edition.content`` when it is prepared, so a retry or a
  "view in browser" shows exactly what was sent.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only autoincrements an INTEGER PRIMARY KEY, so big ids fall back to it there.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as VARCHAR with a CHECK constraint: new states need no ALTER TYPE on PostgreSQL.
    return Enum(cls, native_enum=False, values_callable=lambda e: [m.value for m in e], length=20)


class SourceRole(enum.StrEnum):
    """What a source's list means to the newsroom."""

    LATEST = "latest"
    MUST_READ = "must_read"
    POPULAR = "popular"


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    # On the suppression list (hard bounce, complaint, too many soft bounces, by hand): never
    # mailed again, whatever their subscriptions say.
    SUPPRESSED = "suppressed"
    # Personal data erased on request (GDPR art. 17); the row stays so counts stay true.
    ERASED = "erased"


class Frequency(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class BounceKind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"
    # Not to be sent any more: the subscriber left, or the edition was cancelled.
    CANCELLED = "cancelled"


FINAL_DELIVERY_STATES = (
    DeliveryState.SENT,
    DeliveryState.FAILED,
    DeliveryState.UNKNOWN,
    DeliveryState.CANCELLED,
)


class ClickKind(enum.StrEnum):
    HUMAN = "human"
    # Security gateways and link checkers that open every link of a message.
    SCANNER = "scanner"
    BOT = "bot"


class OpenKind(enum.StrEnum):
    HUMAN = "human"
    # Fetched ahead of any reading by a privacy proxy (Apple Mail Privacy Protection).
    PREFETCH = "prefetch"
    SCANNER = "scanner"
    BOT = "bot"


class SocialPostState(enum.StrEnum):
    # Waiting for an editor (accounts with approval on); posted once approved.
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    POSTING = "posting"
    POSTED = "posted"
    FAILED = "failed"
    # The call may have reached the platform and nothing can read it back: an editor checks.
    UNKNOWN = "unknown"
    # Not posted within the account's expiry after its time: a stale queue never floods.
    EXPIRED = "expired"
    # An editor turned it down.
    SKIPPED = "skipped"


class SocialPostKind(enum.StrEnum):
    MUST_READ = "must_read"
    LATEST = "latest"
    EVERGREEN = "evergreen"
    # Posted by an editor's "post now".
    MANUAL = "manual"


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    # Stopped by an editor.
    PAUSED = "paused"
    # The platform refused the credentials: nothing posts until the account is connected again.
    REAUTH = "reauth"


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    # rss | atom | json (all read as feeds) or html (a section page with story lists).
    kind: Mapped[str] = mapped_column(String(20), default="rss")
    # For feeds: what the feed's list means. HTML pages name their lists in their headings.
    role: Mapped[SourceRole] = mapped_column(_enum(SourceRole), default=SourceRole.LATEST)
    name: Mapped[str] = mapped_column(String(200), default="")
    # HTML only: CSS selectors overriding the defaults (see digest.html_lists.Selectors).
    selectors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    interval_seconds: Mapped[int] = mapped_column(default=900, server_default="900")
    # When the beat next fetches it; pushed back with exponential backoff after failures.
    next_fetch_at: Mapped[datetime | None] = mapped_column(index=True)
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_fetched_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    error_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Story(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(primary_key=True)
    canonical_url: Mapped[str] = mapped_column(String(2048), unique=True)
    guid: Mapped[str | None] = mapped_column(String(2048), index=True)
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    section: Mapped[str] = mapped_column(String(100), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    image_url: Mapped[str | None] = mapped_column(String(2048))
    published_at: Mapped[datetime] = mapped_column(index=True)
    # An editor's must-read pin, in force until this time.
    pinned_until: Mapped[datetime | None]
    # Worth sharing again on social accounts that re-share (SocialAccount.reshare_days).
    evergreen: Mapped[bool] = mapped_column(default=False, server_default=false())
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Listing(Base):
    """A story's place on one of a source's lists (Must-Reads, Popular Now, …) as last fetched.

    Each successful fetch replaces the source's rows for that list, so a story that fell off
    the site's list falls off here too, without touching other sources' lists.
    """

    __tablename__ = "listings"

    source_id: Mapped[int] = mapped_column(
        ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[SourceRole] = mapped_column(_enum(SourceRole), primary_key=True)
    story_id: Mapped[int] = mapped_column(
        ForeignKey("stories.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    rank: Mapped[int]


class StoryRevision(Base):
    """A change to a stored story (a corrected headline, a rewritten summary), kept as a record."""

    __tablename__ = "story_revisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"), index=True)
    field: Mapped[str] = mapped_column(String(30))
    old_value: Mapped[str] = mapped_column(Text)
    new_value: Mapped[str] = mapped_column(Text)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Stored lower-cased: the unique index is then case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus), default=SubscriberStatus.PENDING
    )
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    tracking_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Newsletter(Base):
    __tablename__ = "newsletters"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    from_address: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    # templates/email/<template>.html and .txt
    template: Mapped[str] = mapped_column(String(100), default="digest", server_default="digest")
    # The sections a reader may choose from in the preference centre; empty: no choice offered.
    sections: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Weekly readers receive the edition of this weekday (0 = Monday).
    weekly_day: Mapped[int] = mapped_column(default=0, server_default="0")
    # Shown on the subscribe form; the consent log records a hash of the text agreed to.
    consent_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Hour of day (UTC) at which the beat prepares the daily edition; None = sent by hand only.
    send_hour_utc: Mapped[int | None]
    # Local-time delivery: each reader's delivery waits for this hour in their time zone (or
    # the hour they chose); None: sent as soon as the edition is prepared (digest.local_time).
    local_send_hour: Mapped[int | None]
    must_read_limit: Mapped[int] = mapped_column(default=5)
    latest_limit: Mapped[int] = mapped_column(default=10)
    popular_limit: Mapped[int] = mapped_column(default=5, server_default="5")
    # At most this many of the Latest Stories from one section.
    section_quota: Mapped[int] = mapped_column(default=4, server_default="4")
    # A reader with fewer new stories than this gets no edition that day (a thin day).
    min_items: Mapped[int] = mapped_column(default=1, server_default="1")
    # Dates, numbers and the templates' words in this locale (Babel; templates/locale).
    locale: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    # Editor-written Jinja, run sandboxed when an edition is prepared (digest.editor_templates);
    # empty: the built-in subject and no intro.
    subject_template: Mapped[str] = mapped_column(Text, default="", server_default="")
    intro_template: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("newsletter_id", "subscriber_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletters.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    # Receives editions: confirmed and not unsubscribed (a pending sign-up is not active).
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # The reader's choices in the preference centre. sections: None = every section.
    sections: Mapped[list[str] | None] = mapped_column(JSON)
    frequency: Mapped[Frequency] = mapped_column(
        _enum(Frequency), default=Frequency.DAILY, server_default=Frequency.DAILY.value
    )
    # Local hour (in the subscriber's time zone) the reader would like the edition; None: the
    # newsletter's own hour.
    send_hour: Mapped[int | None]
    # No editions until this day (the reader's holiday).
    paused_until: Mapped[date | None] = mapped_column(Date)
    # Sunset: the one re-engagement message went out at; then paused at, if nothing followed.
    reengagement_sent_at: Mapped[datetime | None]
    sunset_at: Mapped[datetime | None]
    # Last time the reader said "keep sending" (saved preferences): the sunset judges only
    # editions sent after it.
    kept_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """An address never to be mailed again, kept as a hash so that it outlives the erasure of
    the subscriber's data and still stops a re-import of the same address."""

    __tablename__ = "suppressions"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(30))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsentEvent(Base):
    """The consent log: append-only (triggers refuse UPDATE and DELETE), and free of personal
    data (a hash of the address, a truncated IP), so that an erasure leaves it whole."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), index=True)
    # A plain number, not a foreign key: deleting a newsletter must not rewrite the log.
    newsletter_id: Mapped[int | None]
    action: Mapped[str] = mapped_column(String(30))
    source: Mapped[str] = mapped_column(String(30))
    # Indexed for the sign-up form's rate limit per network.
    ip_prefix: Mapped[str | None] = mapped_column(String(64), index=True)
    consent_version: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Bounce(Base):
    """A bounce or complaint as reported, once per report and recipient (report_key)."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    report_key: Mapped[str] = mapped_column(String(64), unique=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind))
    status: Mapped[str] = mapped_column(String(30), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Edition(Base):
    __tablename__ = "editions"
    # One edition per newsletter and day: a duplicate beat tick cannot prepare a second one.
    __table_args__ = (UniqueConstraint("newsletter_id", "issue_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletters.id", ondelete="CASCADE"))
    issue_date: Mapped[date] = mapped_column(Date)
    subject: Mapped[str] = mapped_column(String(500))
    preheader: Mapped[str] = mapped_column(String(500), default="")
    # The editor's intro as rendered when the edition was prepared (plain text).
    intro: Mapped[str] = mapped_column(Text, default="", server_default="")
    # The frozen snapshot: {"blocks": [{"key", "title", "items": [{story, link_id, ...}]}]}.
    # Each reader gets the stories of it they have not received (digest.selection.personalise).
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    prepared_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Last time send tasks were put on the broker; the reconciler re-dispatches stalled editions.
    dispatched_at: Mapped[datetime | None]
    # While set, no batch of this edition is claimed (one in flight finishes).
    paused_at: Mapped[datetime | None]
    # Who or what paused it: an editor, or the sending engine after too many errors.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    cancelled_at: Mapped[datetime | None]

    newsletter: Mapped[Newsletter] = relationship()


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("edition_id", "subscriber_id"),
        # A batch's claim takes an edition's first queued rows in id order (digest.sending).
        Index("ix_deliveries_edition_state_id", "edition_id", "state", "id"),
        # The sent-stories ledger is read per subscriber (digest.ledger).
        Index("ix_deliveries_subscriber_id", "subscriber_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    # While ``sending``, the claim is valid until this time; after it the row is presumed to
    # have died inside the SMTP window and becomes ``unknown`` (never resent automatically).
    lease_until: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    # Not claimed before this moment: the reader's local send hour (digest.local_time).
    not_before: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    # Indexed for the send rate that /metrics reports (deliveries sent in the last minute).
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
    # Set when the reader unsubscribed through this message's link or header.
    unsubscribed_at: Mapped[datetime | None]
    # The stories this message carried, recorded as it enters the SMTP window (digest.ledger).
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("edition_segments.id", ondelete="SET NULL")
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EditionSegment(Base):
    """One set of an edition's stories that some readers received. Deliveries point at the
    segment they carried, so "which stories has this reader received?" is a join
    (digest.ledger): one row per kind of reader, not one per message."""

    __tablename__ = "edition_segments"
    __table_args__ = (UniqueConstraint("edition_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    # Each block's story ids in the order shown (digest.selection.segment_key), from which
    # "view in browser" rebuilds exactly what the reader got.
    key: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentStory(Base):
    __tablename__ = "segment_stories"

    segment_id: Mapped[int] = mapped_column(
        ForeignKey("edition_segments.id", ondelete="CASCADE"), primary_key=True
    )
    story_id: Mapped[int] = mapped_column(
        ForeignKey("stories.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Link(Base):
    """A tracked link: the redirect target always comes from this row, never from the URL."""

    __tablename__ = "links"
    __table_args__ = (UniqueConstraint("edition_id", "url"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    edition_id: Mapped[int | None] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    story_id: Mapped[int | None] = mapped_column(ForeignKey("stories.id", ondelete="SET NULL"))
    # A shared link's post: social clicks land in the same tables as email clicks.
    social_post_id: Mapped[int | None] = mapped_column(
        ForeignKey("social_posts.id", ondelete="CASCADE"), unique=True
    )
    url: Mapped[str] = mapped_column(String(4096))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Click(Base):
    __tablename__ = "clicks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"), index=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    clicked_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Truncated before storage (/24 for IPv4, /48 for IPv6): enough for abuse ranges, not people.
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    # None for clicks recorded before classification existed.
    kind: Mapped[ClickKind | None] = mapped_column(_enum(ClickKind))
    # Unique per recorded event: replaying the web app's journal after a crash cannot count a
    # click twice. None for clicks recorded before the journal existed.
    event_key: Mapped[str | None] = mapped_column(String(64), unique=True)


class Open(Base):
    __tablename__ = "opens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    kind: Mapped[OpenKind | None] = mapped_column(_enum(OpenKind))
    event_key: Mapped[str | None] = mapped_column(String(64), unique=True)


class SocialAccount(Base):
    __tablename__ = "social_accounts"
    __table_args__ = (UniqueConstraint("platform", "handle"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(30))
    handle: Mapped[str] = mapped_column(String(200))
    # MultiFernet ciphertext; the plaintext never reaches the database or the logs.
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The platform's API root; None: the platform's public one (digest.social.accounts).
    base_url: Mapped[str | None] = mapped_column(String(2048))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Posting times in the account's time zone, "HH:MM,HH:MM"; empty: must-reads only.
    slots: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Posts per local day, must-reads included.
    daily_cap: Mapped[int] = mapped_column(default=6, server_default="6")
    # Posts wait for an editor's approval before they go out.
    approval: Mapped[bool] = mapped_column(default=False, server_default=false())
    # A post not made this long after its time is dropped, not posted late.
    expiry_minutes: Mapped[int] = mapped_column(default=120, server_default="120")
    # Evergreen stories are shared again after this many days; None: never.
    reshare_days: Mapped[int | None]
    utm_campaign: Mapped[str] = mapped_column(
        String(100), default="social", server_default="social"
    )
    # The account's own length limit where the platform has one (a Mastodon instance's).
    max_characters: Mapped[int | None]
    status: Mapped[AccountStatus] = mapped_column(
        _enum(AccountStatus), default=AccountStatus.ACTIVE, server_default="active"
    )
    status_reason: Mapped[str | None] = mapped_column(Text)
    # The platform asked us to wait (Retry-After, rate-limit reset): nothing posts before.
    retry_at: Mapped[datetime | None]
    # The last posting slot taken; claiming a slot moves it, so a slot is filled once.
    last_slot_at: Mapped[datetime | None]
    # When the account was connected or last resumed: must-reads from before then are not
    # posted all at once (None: since it was created, before this column).
    active_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SocialPost(Base):
    __tablename__ = "social_posts"
    __table_args__ = (
        UniqueConstraint("story_id", "account_id", "variant"),
        Index("ix_social_posts_state", "state", "scheduled_for"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(
        ForeignKey("social_accounts.id", ondelete="CASCADE"), index=True
    )
    # "default" for a story's first share on the account; re-shares are named apart.
    variant: Mapped[str] = mapped_column(String(30), default="default")
    kind: Mapped[SocialPostKind] = mapped_column(
        _enum(SocialPostKind), default=SocialPostKind.LATEST, server_default="latest"
    )
    state: Mapped[SocialPostState] = mapped_column(
        _enum(SocialPostState), default=SocialPostState.QUEUED
    )
    # Rendered and checked against the platform's rule when the row is written: frozen.
    text: Mapped[str] = mapped_column(Text, default="")
    # The tracked link as shared: read-backs look for exactly this URL, whatever keys rotate.
    share_url: Mapped[str | None] = mapped_column(String(2048))
    remote_id: Mapped[str | None] = mapped_column(String(200))
    # The post on the platform, where the platform says.
    url: Mapped[str | None] = mapped_column(String(2048))
    scheduled_for: Mapped[datetime | None]
    approved_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    # A claimed row's lease; a row still posting after it went through an unclear window.
    lease_until: Mapped[datetime | None]
    # Read back before the next attempt: an earlier one may have landed.
    verify: Mapped[bool] = mapped_column(default=False, server_default=false())
    posted_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskFailure(Base):
    """Failed Celery tasks counted per task name, for /metrics: workers run on other machines
    than the web app that serves the metrics, and the database is what they all share."""

    __tablename__ = "task_failures"

    task: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)
    # None for a task registered by a worker (failures 0) that has never failed.
    last_failed_at: Mapped[datetime | None]


class RateBucket(Base):
    """A token bucket shared by every worker (digest.rate_limit). Times are epoch seconds, so
    the refill is arithmetic that SQLite and PostgreSQL do alike in one UPDATE."""

    __tablename__ = "rate_buckets"

    # "send", or "domain:" and a destination domain.
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
