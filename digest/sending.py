"""Sending an edition: claim a batch, render and hand over each message, record the outcome.

Lifecycle of a delivery (DESIGN, rule 3)::

    queued ──(claimed: leased, still queued)──▶ sending ──▶ sent | deferred | failed | unknown
      ▲                                                          │
      └──────────────── reconcile, when the retry is due ────────┘ deferred only
    queued | deferred ──(unsubscribed, edition cancelled)──▶ cancelled

Invariants:
- A batch is claimed by one atomic UPDATE … RETURNING that leases rows to one worker; two
  workers never hold the same row. A claimed row stays ``queued``: if its worker dies, the lease
  runs out and the row is simply claimed again.
- A row becomes ``sending`` (committed) only once the relay accepted its recipient, before
  the message itself goes out (while the relay answers DATA). On PostgreSQL a success is
  written and committed with the next message's ``sending`` (one commit per message instead of
  two), or with the next outcome that is not a plain success, before a wait for the send rate,
  or when the batch ends (_Records). So a crash leaves at most one message in ``sending``: the
  one being handed over, or the one just accepted whose success was not committed yet. When
  its lease runs out the reconciler marks it ``unknown``: it may have been delivered, so it is
  never resent.
- A relay that takes nothing (down, refusing the sender, closing) stops the batch without
  charging any recipient: the untried rows go back to the queue and the task retries later.
- One recipient whose message cannot be built (bad data, or a segment the database refuses:
  digest.ledger.segment) fails alone; the batch goes on.
- Never a story twice: a message enters ``sending`` only if its reader has not received one of
  its stories since the batch read the ledger (another newsletter's message, sent by another
  worker meanwhile); otherwise it is chosen again from the ledger as it is then.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from digest.bounce_reports import ReportKind, classify_smtp_reply
from digest.bounces import record_bounce
from digest.config import DEFAULT_STALL_SECONDS, MAX_BATCH_SECONDS, Settings
from digest.db import Statement, commit_together
from digest.editions import extend_pool
from digest.ledger import RECEIVED, SegmentUnavailable, readers, received_stories, segment
from digest.logs import log_context
from digest.mail import (
    PermanentError,
    Sender,
    TransientError,
    TransportUnavailable,
    UncertainOutcome,
    compose,
    dkim_sign,
    open_sender,
)
from digest.models import (
    BounceKind,
    Delivery,
    DeliveryState,
    Edition,
    Link,
    SegmentStory,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)
from digest.rate_limit import SendRateLimit
from digest.render import EditionLayout, Frame, RenderedMessage, render_layout
from digest.selection import Limits, Reader, personalise, segment_key, story_ids
from digest.tokens import TokenSigner
from digest.verp import UNSUBSCRIBE, short_mac, tagged_address, verp_address

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
STALL = timedelta(seconds=DEFAULT_STALL_SECONDS)
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=5)
# A batch of at least this many attempts in which at least this share did not go out (failed,
# deferred or unknown) pauses its edition until someone looks (``digest editions resume``).
AUTO_PAUSE_MIN_ATTEMPTS = 20
AUTO_PAUSE_SHARE = 0.5
# This many messages in a row whose outcome is unknown (the relay hung up on, or never answered,
# their final dot) stop the batch and pause the edition at once: each one is a reader who may
# or may not have it and never gets it again, and a relay that times out on every message (30 s
# each) would never reach the share above within a batch's time.
UNKNOWN_IN_A_ROW = 3

# When an edition's send messages were lost, this many self-continuing tasks take it up again:
# enough to keep a few workers busy, few enough that a false alarm costs nothing.
RECOVERY_TASKS = 4


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    subscriber_id: int
    email: str
    tracking: bool
    reader: Reader  # what personalises their edition

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()


def _claimable(now: datetime) -> ColumnElement[bool]:
    # The edition's pause and cancellation are part of the row's claimability, so that
    # claiming, dispatching and a batch's "is there more?" all respect them alike, including
    # for a row that came back to the queue after the cancel (a deferral, a release).
    return and_(
        Delivery.state == DeliveryState.QUEUED,
        or_(Delivery.lease_until.is_(None), Delivery.lease_until < now),
        # Waiting for the reader's local send hour (digest.local_time).
        or_(Delivery.not_before.is_(None), Delivery.not_before <= now),
        ~exists().where(
            Edition.id == Delivery.edition_id,
            or_(Edition.paused_at.is_not(None), Edition.cancelled_at.is_not(None)),
        ),
    )


def claim_batch(session: Session, edition_id: int, limit: int, now: datetime) -> list[int]:
    """Atomically lease up to ``limit`` queued deliveries of the edition to this worker."""
    pick = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, _claimable(now))
        .order_by(Delivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Concurrent claimers skip each other's rows instead of queueing on the row locks.
        # (SQLite serialises writers anyway and would silently drop the clause.)
        pick = pick.with_for_update(skip_locked=True)
    # Joined as a CTE, not ``id IN (subquery)``: PostgreSQL may run an IN subquery once per
    # candidate row (a nested-loop semi join, chosen on a freshly written table), re-applying
    # its LIMIT each time and leasing the whole edition to one worker.
    picked = pick.cte("picked")
    claimed = session.scalars(
        update(Delivery)
        .where(Delivery.id == picked.c.id, _claimable(now))
        .values(lease_until=now + LEASE, claimed_at=now)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(claimed)


@functools.cache
def _update_statement(
    since: tuple[DeliveryState, ...], columns: tuple[str, ...], count_attempt: bool
) -> Update:
    """One delivery's state change, built once per shape: building it through the ORM for
    every message cost more than the database does (bench/RESULTS.md, sending end to end)."""
    table = Delivery.__table__
    values: dict[str, Any] = {c: bindparam(c, type_=table.c[c].type) for c in columns}
    if count_attempt:
        values["attempts"] = table.c.attempts + 1
    return (
        update(table)
        .where(table.c.id == bindparam("delivery_id"), _state_in(table.c.state, since))
        .values(values)
    )


def _state_in(
    column: ColumnElement[DeliveryState], states: tuple[DeliveryState, ...]
) -> ColumnElement[bool]:
    """``column IN states``, one bound value per state: an expanding IN could not be sent by
    digest.db.commit_together."""
    return column.in_([literal(state, column.type) for state in states])


def _change(
    delivery_id: int,
    since: tuple[DeliveryState, ...],
    *,
    count_attempt: bool = False,
    **values: object,
) -> Statement:
    """The statement, and its parameters, that changes the delivery if it is in one of
    ``since``."""
    statement = _update_statement(since, tuple(sorted(values)), count_attempt)
    return statement, {"delivery_id": delivery_id, **values}


def _outcome(delivery_id: int, state: DeliveryState, **values: object) -> Statement:
    """An attempt's outcome (the refusal may come before or after the message entered the
    SMTP window)."""
    since = (DeliveryState.QUEUED, DeliveryState.SENDING)
    return _change(delivery_id, since, count_attempt=True, state=state, lease_until=None, **values)


# Namespace of the per-reader advisory locks taken when a message enters the SMTP window.
_READER_LOCK = 0x6C656467  # "ledg"


@functools.cache
def _begin_statement() -> Update:
    """queued → sending, recording the message's segment, unless the reader has meanwhile
    received one of its stories in another delivery. Personalising left out what the reader
    had received when the batch read the ledger, so an overlap here can only come from a
    message of another newsletter that entered the window since: this one is then rebuilt."""
    table = Delivery.__table__
    other = table.alias("other")
    mine = SegmentStory.__table__.alias("mine")
    theirs = SegmentStory.__table__.alias("theirs")
    overlap = (
        select(1)
        .where(
            other.c.subscriber_id == table.c.subscriber_id,
            other.c.id != table.c.id,
            _state_in(other.c.state, RECEIVED),
            theirs.c.segment_id == other.c.segment_id,
            mine.c.segment_id == bindparam("segment_id"),
            mine.c.story_id == theirs.c.story_id,
        )
        .exists()
    )
    return (
        update(table)
        .where(
            table.c.id == bindparam("delivery_id"), table.c.state == DeliveryState.QUEUED, ~overlap
        )
        .values(
            state=DeliveryState.SENDING,
            lease_until=bindparam("lease_until", type_=table.c.lease_until.type),
            segment_id=bindparam("segment_id"),
        )
    )


@functools.cache
def _lock_statement() -> Select[Any]:
    """The reader's advisory lock, held until the transaction ends."""
    return select(func.pg_advisory_xact_lock(bindparam("space"), bindparam("reader")))


class _Records:
    """A batch's writes to its delivery rows, over one session.

    On PostgreSQL a success is held here, not written when it happens: it is written and
    committed with the next message's entry into the SMTP window, so that a message costs one
    round trip to the database (digest.db.commit_together); so does the next outcome, or
    ``commit`` (before a wait, when the batch ends). SQLite locks the whole database for a
    writer, so there a success is committed at once: other workers must not wait behind our
    next SMTP exchange.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.postgresql = session.get_bind().dialect.name == "postgresql"
        # The success not committed yet: (delivery id, when the relay took it).
        self.unwritten: tuple[int, datetime] | None = None

    def sent(self, delivery_id: int) -> None:
        self.unwritten = (delivery_id, utcnow())
        if not self.postgresql:
            self.commit()

    def settle(self, delivery_id: int, state: DeliveryState, **values: object) -> None:
        """Record and commit an outcome other than a plain success."""
        self._commit([_outcome(delivery_id, state, **values)])

    def commit(self) -> None:
        self._commit([])

    def begin(self, delivery_id: int, subscriber_id: int, segment_id: int, *, check: bool) -> bool:
        """Enter the SMTP window, recording the stories the message carries in the
        sent-stories ledger (digest.ledger); False if the delivery was cancelled since it was
        claimed, or (with ``check``) if the reader received one of its stories meanwhile (see
        _begin_statement).

        On PostgreSQL a transaction-scoped advisory lock on the reader makes two newsletters'
        batches enter the window for one reader one after the other, so each sees the other's
        stories (the guarded UPDATE's snapshot is taken after the lock is granted); SQLite runs
        one writer at a time anyway."""
        lease_until = utcnow() + LEASE
        if not check:
            entry = _change(
                delivery_id,
                (DeliveryState.QUEUED,),
                state=DeliveryState.SENDING,
                lease_until=lease_until,
                segment_id=segment_id,
            )
            return bool(self._commit([entry])[-1])
        statements: list[Statement] = []
        if self.postgresql:
            statements.append((_lock_statement(), {"space": _READER_LOCK, "reader": subscriber_id}))
        statements.append(
            (
                _begin_statement(),
                {"delivery_id": delivery_id, "segment_id": segment_id, "lease_until": lease_until},
            )
        )
        return bool(self._commit(statements)[-1])

    def _commit(self, statements: list[Statement]) -> list[int]:
        """Write the success held, if any, then ``statements``, and commit them together;
        each statement's row count."""
        if self.unwritten is not None:
            delivery_id, sent_at = self.unwritten
            success = _outcome(delivery_id, DeliveryState.SENT, sent_at=sent_at, last_error=None)
            statements = [success, *statements]
        counts = commit_together(self.session, statements)
        self.unwritten = None
        return counts


def _release(session: Session, delivery_ids: list[int], states: tuple[DeliveryState, ...]) -> None:
    """Give back rows this batch will not try, if they are still in one of ``states``."""
    if not delivery_ids:
        return
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state.in_(states))
        .values(state=DeliveryState.QUEUED, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def retry_delay(attempt: int) -> timedelta:
    """Exponential backoff with ±50% jitter, so deferred rows do not return in one wave."""
    return RETRY_BASE * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def message_id(settings: Settings, domain: str, edition_id: int, delivery_id: int) -> str:
    """Stable per delivery (a resend is recognisably the same message), unguessable across
    installations that share a domain."""
    # The oldest key changes least often under rotation (keys are listed newest first).
    mac = short_mac(settings.secret_keys[-1], f"message-id:{edition_id}.{delivery_id}")
    return f"<{edition_id}.{delivery_id}.{mac}@{domain}>"


class ThinEdition(Exception):
    """Too few stories are new to this reader for a message (the newsletter's min_items)."""


@dataclass(frozen=True)
class Message:
    data: bytes
    segment_id: int  # the stories it carries (digest.ledger)


class EditionMailer:
    """Everything needed to build one edition's messages, loaded once per batch."""

    def __init__(self, session: Session, settings: Settings, edition: Edition) -> None:
        self.session = session
        self.settings = settings
        self.edition = edition
        self.newsletter = edition.newsletter
        self.limits = Limits.of(self.newsletter)
        self.frame = Frame.of(edition)
        self.from_address = self.newsletter.from_address or settings.from_address
        self.sender_address = parseaddr(self.from_address)[1]
        self.domain = self.sender_address.rpartition("@")[2]
        self.signer = TokenSigner(settings.secret_keys)
        self.link_urls = dict(
            session.execute(select(Link.id, Link.url).where(Link.edition_id == edition.id)).all()
        )
        self._layouts: dict[tuple[str, bool], EditionLayout] = {}
        self._segments: dict[str, int] = {}

    def envelope_from(self, recipient: Recipient) -> str:
        """The SMTP envelope sender (where bounces go): the delivery's VERP address when
        DIGEST_BOUNCE_DOMAIN is set, else the From address."""
        if self.settings.bounce_domain is None:
            return self.sender_address
        return verp_address(
            self.settings.secret_keys, self.settings.bounce_domain, recipient.delivery_id
        )

    def blocks(self, reader: Reader) -> list[dict[str, Any]]:
        """The reader's stories; ThinEdition if too few of them are new to the reader."""
        blocks = personalise(self.edition.content["blocks"], reader, self.limits)
        shown = len(story_ids(blocks))
        if shown < max(self.newsletter.min_items, 1):
            raise ThinEdition(
                f"a thin day for this reader: {shown} new stories, "
                f"the newsletter needs at least {self.newsletter.min_items}"
            )
        return blocks

    def tracked(self, recipient: Recipient) -> bool:
        # Off for this reader or for the whole installation: plain links, no pixel.
        return recipient.tracking and self.settings.tracking

    def urls(self, recipient: Recipient) -> Callable[[str], str]:
        """The reader's URL for each slot of a layout. Memoised: the HTML and the text part
        carry the same links, and a token costs more to mint than to look up."""
        base = self.settings.base_url
        delivery_id = recipient.delivery_id
        tracked = self.tracked(recipient)

        @functools.cache
        def url(slot: str) -> str:
            if slot == "unsubscribe":
                return self.unsubscribe_url(recipient)
            if slot == "preferences":
                token = self.signer.preferences_token(recipient.subscriber_id, self.newsletter.id)
                return f"{base}/p/{token}"
            if slot == "view":
                return f"{base}/v/{self.signer.view_token(delivery_id)}"
            if slot == "pixel":
                return f"{base}/o/{self.signer.open_token(delivery_id)}"
            link_id = int(slot.removeprefix("link_"))
            if not tracked:
                return self.link_urls[link_id]
            return f"{base}/c/{self.signer.click_token(link_id, delivery_id)}"

        return url

    def unsubscribe_url(self, recipient: Recipient) -> str:
        token = self.signer.unsubscribe_token(
            recipient.subscriber_id, self.newsletter.id, recipient.delivery_id
        )
        return f"{self.settings.base_url}/u/{token}"

    def rendered(
        self, recipient: Recipient, urls: Callable[[str], str]
    ) -> tuple[RenderedMessage, int]:
        """The reader's message parts and the segment they carry. Jinja and the CSS inliner
        run once per batch for each segment (readers who get the same stories), tracked or
        not; the reader's ``urls`` (see urls) are filled into that layout."""
        blocks = self.blocks(recipient.reader)
        key = segment_key(blocks)
        segment_id = self._segments.get(key)
        if segment_id is None:
            segment_id = self._segments[key] = segment(
                self.session, self.edition.id, key, story_ids(blocks)
            )
        tracked = self.tracked(recipient)
        layout = self._layouts.get((key, tracked))
        if layout is None:
            layout = self._layouts[key, tracked] = render_layout(
                self.frame, blocks, tracked=tracked
            )
        return layout.fill(urls), segment_id

    def message(self, recipient: Recipient, now: datetime) -> Message:
        urls = self.urls(recipient)
        rendered, segment_id = self.rendered(recipient, urls)
        unsubscribe = urls("unsubscribe")
        list_id = f"{self.newsletter.slug}.{self.domain}"
        # The mailto is for clients without one-click support; it is offered only where mail
        # comes back to us (a bounce domain routed to the webhook, or the inbound mailbox),
        # since an unsubscribe mail that nobody reads would be a broken promise.
        list_unsubscribe = f"<{unsubscribe}>"
        if self.settings.bounce_domain or self.settings.inbound_mailbox:
            mailto = tagged_address(
                self.settings.secret_keys,
                UNSUBSCRIBE,
                self.settings.bounce_domain or self.domain,
                recipient.delivery_id,
            )
            list_unsubscribe += f", <mailto:{mailto}?subject=unsubscribe>"
        reply_to = [("Reply-To", self.newsletter.reply_to)] if self.newsletter.reply_to else []
        message = compose(
            sender=self.from_address,
            recipient=recipient.email,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id(
                self.settings, self.domain, self.edition.id, recipient.delivery_id
            ),
            date=now,
            headers=[
                ("List-Id", f"{self.newsletter.name} <{list_id}>"),
                *reply_to,
                ("List-Unsubscribe", list_unsubscribe),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                # Gmail's feedback loop: complaint rates per campaign:customer:type:sender.
                (
                    "Feedback-ID",
                    f"{self.edition.id}:{self.newsletter.slug}:digest:{self.domain}",
                ),
            ],
        )
        if self.settings.dkim_selector and self.settings.dkim_key:
            message = dkim_sign(
                message, self.settings.dkim_selector, self.domain, self.settings.dkim_key
            )
        return Message(message, segment_id)


class _ReceivedMeanwhile(Exception):
    """The reader received one of the message's stories since the batch read the ledger."""


def _hand_over(
    records: _Records,
    mailer: EditionMailer,
    sender: Sender,
    recipient: Recipient,
    message: Message,
    meanwhile: Callable[[], None] | None,
    *,
    check: bool = True,
) -> DeliveryState | None:
    """Send one message and record its outcome; None if it was cancelled meanwhile. Raises
    _ReceivedMeanwhile (nothing sent) when ``check`` finds the reader got one of its stories
    since the batch began. ``meanwhile`` runs while the relay decides (Sender.send).

    TransportUnavailable propagates: the relay, not the recipient, is the problem.
    """
    session = records.session
    delivery_id = recipient.delivery_id
    key = f"{mailer.edition.id}-{delivery_id}"
    try:
        if not sender.send(
            mailer.envelope_from(recipient),
            recipient.email,
            message.data,
            key,
            lambda: records.begin(
                delivery_id, recipient.subscriber_id, message.segment_id, check=check
            ),
            meanwhile,
        ):
            state = session.scalar(select(Delivery.state).where(Delivery.id == delivery_id))
            if check and state is DeliveryState.QUEUED:
                raise _ReceivedMeanwhile
            return None
    except UncertainOutcome as exc:
        log.warning("delivery %s: outcome unknown, not resent: %s", delivery_id, exc)
        records.settle(delivery_id, DeliveryState.UNKNOWN, last_error=str(exc))
        return DeliveryState.UNKNOWN
    except PermanentError as exc:
        log.warning("delivery %s failed: %s", delivery_id, exc)
        records.settle(delivery_id, DeliveryState.FAILED, last_error=str(exc))
        _bounced(session, delivery_id, classify_smtp_reply(exc.code, str(exc)), str(exc))
        return DeliveryState.FAILED
    except TransientError as exc:
        attempts = session.scalar(select(Delivery.attempts).where(Delivery.id == delivery_id))
        if attempts is None or attempts + 1 >= MAX_ATTEMPTS:
            log.warning("delivery %s failed after %s attempts: %s", delivery_id, attempts, exc)
            records.settle(delivery_id, DeliveryState.FAILED, last_error=str(exc))
            # Throttling that outlasted the retries is still about our sending, not the
            # address: classified, it does not count towards suppression.
            _bounced(session, delivery_id, classify_smtp_reply(exc.code, str(exc)), str(exc))
            return DeliveryState.FAILED
        log.info("delivery %s deferred: %s", delivery_id, exc)
        records.settle(
            delivery_id,
            DeliveryState.DEFERRED,
            last_error=str(exc),
            next_attempt_at=utcnow() + retry_delay(attempts + 1),
        )
        return DeliveryState.DEFERRED
    records.sent(delivery_id)
    return DeliveryState.SENT


def _bounced(session: Session, delivery_id: int, kind: ReportKind, reply: str) -> None:
    """A refusal at SMTP time counts as the bounce it would have come back as: a bad mailbox
    suppresses the address before the next edition (digest.bounces)."""
    if kind == ReportKind.IGNORED:
        return
    record_bounce(
        session,
        delivery_id,
        BounceKind(kind.value),
        key=f"smtp:{delivery_id}",
        detail=reply,
        now=utcnow(),
    )
    session.commit()


def _build(
    records: _Records, mailer: EditionMailer, recipient: Recipient
) -> Message | DeliveryState:
    """The reader's message, or the outcome recorded when there is none: a thin day for this
    reader (cancelled), or a message that cannot be built (failed, alone)."""
    try:
        return mailer.message(recipient, utcnow())
    except ThinEdition as exc:
        records.settle(recipient.delivery_id, DeliveryState.CANCELLED, last_error=str(exc))
        return DeliveryState.CANCELLED
    except (ValueError, LookupError, TypeError, TemplateError, SegmentUnavailable) as exc:
        log.error("delivery %s cannot be built: %r", recipient.delivery_id, exc)
        records.settle(
            recipient.delivery_id,
            DeliveryState.FAILED,
            last_error=f"message could not be built: {exc!r}",
        )
        return DeliveryState.FAILED


def _deliver(
    records: _Records,
    mailer: EditionMailer,
    sender: Sender,
    recipient: Recipient,
    built: Message | DeliveryState,
    meanwhile: Callable[[], None] | None,
) -> DeliveryState | None:
    """Hand the reader's built message over; its outcome (None: cancelled meanwhile)."""
    if isinstance(built, DeliveryState):
        return built
    try:
        return _hand_over(records, mailer, sender, recipient, built, meanwhile)
    except _ReceivedMeanwhile:
        # Another newsletter's message reached the reader while this batch ran: choose again
        # from the ledger as it is now. The window left (one message's build) is not checked
        # again, so a reader mailed by many newsletters at once cannot hold a batch up.
        pool = {i["story_id"] for b in mailer.edition.content["blocks"] for i in b["items"]}
        received = received_stories(records.session, [recipient.subscriber_id], pool)
        reader = dataclasses.replace(
            recipient.reader, received=frozenset(received.get(recipient.subscriber_id, ()))
        )
        log.info("delivery %s: chosen again, a story reached the reader", recipient.delivery_id)
        recipient = dataclasses.replace(recipient, reader=reader)
        rebuilt = _build(records, mailer, recipient)
        if isinstance(rebuilt, DeliveryState):
            return rebuilt
        return _hand_over(records, mailer, sender, recipient, rebuilt, meanwhile, check=False)


class _BuiltAhead:
    """The next reader's message, built while the relay decides on the current one (its
    Jinja fill, tokens and MIME then cost no wall-clock time of their own). Whatever is not
    built ahead (the first reader; after a refusal, which is replied to before the message
    goes out) is built in its turn.

    An error while building ahead is raised in that reader's turn, as if the message had been
    built then: raised between the final dot and its reply, it would leave the current
    message's outcome unknown."""

    def __init__(self, records: _Records, mailer: EditionMailer) -> None:
        self.records = records
        self.mailer = mailer
        self.built: dict[int, Message | DeliveryState | Exception] = {}

    def take(self, recipient: Recipient) -> Message | DeliveryState:
        built = self.built.pop(recipient.delivery_id, None)
        if built is None:
            return _build(self.records, self.mailer, recipient)
        if isinstance(built, Exception):
            raise built
        return built

    def meanwhile(self, upcoming: list[Recipient]) -> Callable[[], None] | None:
        """What to do while the relay decides: build the first of ``upcoming``, if any."""
        if not upcoming:
            return None
        following = upcoming[0]

        def build() -> None:
            try:
                self.built[following.delivery_id] = _build(self.records, self.mailer, following)
            except Exception as exc:
                if isinstance(exc, SQLAlchemyError):
                    # Nothing is uncommitted here; the current message's outcome needs a
                    # usable session. A rollback that fails too leaves that to the finally.
                    with suppress(SQLAlchemyError):
                        self.records.session.rollback()
                self.built[following.delivery_id] = exc

        return build


def _recipients(session: Session, edition: Edition, claimed: list[int]) -> list[Recipient]:
    """The claimed deliveries whose subscriber may still be mailed. The others (unsubscribed,
    suppressed or erased since the edition was prepared, including while its audience was
    being frozen, which a concurrent unsubscribe cannot see) are cancelled here, and taken
    off ``claimed``."""
    rows = session.execute(
        select(
            Delivery.id.label("delivery_id"),
            Subscriber.id.label("subscriber_id"),
            Subscriber.email,
            Subscriber.tracking_enabled,
            Subscription.sections,
            Delivery.not_before,
            (Subscriber.status == SubscriberStatus.ACTIVE).label("mailable"),
            Subscription.active,
        )
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .outerjoin(
            Subscription,
            and_(
                Subscription.subscriber_id == Subscriber.id,
                Subscription.newsletter_id == edition.newsletter_id,
            ),
        )
        .where(Delivery.id.in_(claimed))
        .order_by(Delivery.id)
    ).all()
    reachable = [row for row in rows if row.mailable and row.active]
    gone = [row.delivery_id for row in rows if not (row.mailable and row.active)]
    personal = readers(
        session,
        edition,
        {row.subscriber_id: row.sections for row in reachable},
        # A local-time reader gets the news up to their send hour (extend_pool).
        {row.subscriber_id: row.not_before or edition.prepared_at for row in reachable},
    )
    recipients = [
        Recipient(
            row.delivery_id,
            row.subscriber_id,
            row.email,
            row.tracking_enabled,
            personal[row.subscriber_id],
        )
        for row in reachable
    ]
    if gone:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(gone), Delivery.state == DeliveryState.QUEUED)
            .values(state=DeliveryState.CANCELLED, lease_until=None, last_error="unsubscribed")
            .execution_options(synchronize_session=False)
        )
        session.commit()
        for delivery_id in gone:
            claimed.remove(delivery_id)
    return recipients


def send_batch(
    sessions: sessionmaker[Session], settings: Settings, edition_id: int
) -> Counter[DeliveryState]:
    """Claim and send the next batch of the edition; returns the outcomes (empty when there
    was nothing left to claim). Raises TransportUnavailable when the relay takes nothing."""
    outcomes: Counter[DeliveryState] = Counter()
    # One connection for the whole batch: a session on the engine would hand its connection
    # back at every commit (one per message) and check one out again, with a ping.
    with (
        log_context(edition_id=edition_id),
        sessions.kw["bind"].connect() as connection,
        sessions(bind=connection) as session,
    ):
        untried = claim_batch(session, edition_id, settings.batch_size, utcnow())
        if not untried:
            return outcomes
        records = _Records(session)
        in_flight: int | None = None
        not_sent: list[int] = []
        unknown_in_a_row = 0
        try:
            edition = session.get_one(Edition, edition_id)
            mailer = EditionMailer(session, settings, edition)
            recipients = _recipients(session, edition, untried)
            limit = SendRateLimit(sessions, settings.send_rate) if settings.send_rate else None
            domain_limits = {
                domain: SendRateLimit(sessions, rate, f"domain:{domain}")
                for domain, rate in settings.domain_rates.items()
            }
            # Well inside the task's soft time limit: the rest goes back to the queue for the
            # next task rather than being cut off mid-exchange (a slow relay, a low rate).
            deadline = time.monotonic() + MAX_BATCH_SECONDS
            ahead = _BuiltAhead(records, mailer)
            with open_sender(settings.smtp_url) as sender:
                for n, recipient in enumerate(recipients):
                    for bucket in (limit, domain_limits.get(recipient.domain)):
                        if bucket is not None:
                            records.commit()  # a waiting outcome is not held through a wait
                            bucket.wait()
                    if time.monotonic() > deadline:
                        log.info("batch out of time: %d deliveries back to the queue", len(untried))
                        break
                    untried.remove(recipient.delivery_id)
                    in_flight = recipient.delivery_id
                    try:
                        with log_context(delivery_id=recipient.delivery_id):
                            built = ahead.take(recipient)
                            outcome = _deliver(
                                records,
                                mailer,
                                sender,
                                recipient,
                                built,
                                ahead.meanwhile(recipients[n + 1 : n + 2]),
                            )
                    except TransportUnavailable:
                        # Refused or cut off before its final dot: certainly not delivered.
                        not_sent, in_flight = [recipient.delivery_id], None
                        raise
                    in_flight = None
                    if outcome is None and _cancelled(session, edition_id):
                        # Each reader left would be refused the same way, each refusal closing
                        # the SMTP session (DATA is on its way by then).
                        log.info("edition cancelled: %d deliveries back to the queue", len(untried))
                        break
                    if outcome is not None:
                        outcomes[outcome] += 1
                    if outcome is DeliveryState.UNKNOWN:
                        unknown_in_a_row += 1
                        if unknown_in_a_row == UNKNOWN_IN_A_ROW:
                            break
                    elif outcome is not None and not isinstance(built, DeliveryState):
                        unknown_in_a_row = 0  # the relay answered (readers not tried do not count)
                # Readers whose message was built ahead and then not tried (a thin day, a
                # message that cannot be built) were settled all the same.
                outcomes.update(b for b in ahead.built.values() if isinstance(b, DeliveryState))
                # Before the QUIT, so that a crash there cannot lose a success.
                records.commit()
        finally:
            # Whatever stopped the batch early, rows it did not try go back to the queue at
            # once (a fresh transaction: the one in use may be the thing that broke), and so
            # does the one the relay certainly did not take. The row whose exchange was cut
            # off by anything else (a time limit, the worker's shutdown) goes back only if it
            # never reached DATA: once ``sending``, it stays for its lease and then becomes
            # ``unknown``, because it may have gone out.
            session.rollback()
            if records.unwritten is not None:
                # A success waiting for a commit that never came: recorded in a fresh
                # transaction (a no-op if it was committed after all: it is no longer queued or
                # sending).
                try:
                    records.commit()
                except SQLAlchemyError:
                    log.exception(
                        "could not record delivery %s as sent; its lease settles it",
                        records.unwritten[0],
                    )
            if in_flight is not None:
                untried.append(in_flight)
            try:
                _release(session, untried, (DeliveryState.QUEUED,))
                _release(session, not_sent, (DeliveryState.QUEUED, DeliveryState.SENDING))
            except SQLAlchemyError:
                log.exception(
                    "could not release %d deliveries; their lease frees them",
                    len(untried) + len(not_sent),
                )
        reason = _auto_pause_reason(outcomes, unknown_in_a_row)
        if reason is not None:
            log.error("edition %s paused: %s", edition_id, reason)
            pause_edition(session, edition_id, utcnow(), reason)
    log.info("edition %s batch: %s", edition_id, dict(outcomes))
    return outcomes


def _cancelled(session: Session, edition_id: int) -> bool:
    return session.scalar(select(Edition.cancelled_at).where(Edition.id == edition_id)) is not None


def _auto_pause_reason(outcomes: Counter[DeliveryState], unknown_in_a_row: int) -> str | None:
    """Why the edition should stop, if this batch says so: when most of a batch does not go
    out, carrying on burns the sender's reputation (or the relay's patience) for nothing.
    Readers with a thin day were not attempted: they are not errors."""
    if unknown_in_a_row >= UNKNOWN_IN_A_ROW:
        return (
            f"the relay left {unknown_in_a_row} messages in a row without an answer to their "
            "final dot (hung up or timed out): whether they were delivered is unknown"
        )
    attempts = sum(n for state, n in outcomes.items() if state != DeliveryState.CANCELLED)
    missed = attempts - outcomes[DeliveryState.SENT]
    if attempts < AUTO_PAUSE_MIN_ATTEMPTS or missed < attempts * AUTO_PAUSE_SHARE:
        return None
    detail = ", ".join(f"{n} {state}" for state, n in sorted(outcomes.items()) if n)
    return f"too many errors: {missed} of {attempts} in one batch did not go out ({detail})"


def pause_edition(session: Session, edition_id: int, now: datetime, reason: str) -> bool:
    """Stop claiming the edition's batches; False if it was already paused or cancelled."""
    paused = session.execute(
        update(Edition)
        .where(Edition.id == edition_id, Edition.paused_at.is_(None))
        .where(Edition.cancelled_at.is_(None))
        .values(paused_at=now, pause_reason=reason)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return bool(paused)


def reconcile(session: Session, now: datetime) -> dict[int, int]:
    """Settle what the database says is overdue: rows whose lease ran out inside the SMTP
    window become ``unknown``; deferred rows whose retry is due are queued again; rows of
    cancelled editions are cancelled. Returns {edition id: rows queued again}, for the caller
    to dispatch."""
    expired = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.SENDING, Delivery.lease_until < now)
        .values(
            state=DeliveryState.UNKNOWN,
            lease_until=None,
            last_error="lease expired while sending: the message may or may not have gone out",
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if expired:
        log.warning("%d deliveries found in sending after their lease: marked unknown", expired)
    # Rows of a cancelled edition that came back after the cancel (a message deferred at its
    # final dot, a batch released by a relay failure) are cancelled too.
    session.execute(
        update(Delivery)
        .where(
            Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
            Delivery.edition_id.in_(select(Edition.id).where(Edition.cancelled_at.is_not(None))),
        )
        .values(state=DeliveryState.CANCELLED, lease_until=None, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    retried = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.DEFERRED, Delivery.next_attempt_at <= now)
        .values(state=DeliveryState.QUEUED, next_attempt_at=None, lease_until=None)
        .returning(Delivery.edition_id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return dict(Counter(edition_id for (edition_id,) in retried))


@dataclass(frozen=True)
class Dispatch:
    """How many send tasks to put on the broker for an edition, and whether they continue
    by themselves until the edition has nothing left to claim."""

    tasks: int
    continuing: bool


def editions_to_dispatch(
    session: Session, now: datetime, batch_size: int, stall: timedelta = STALL
) -> dict[int, Dispatch]:
    """Editions whose claimable deliveries no worker is working on, and what to enqueue.

    Never dispatched, or a local-time bucket came due since the last dispatch: one task per
    batch. Dispatched but untouched for ``stall`` (the messages were lost, or sit behind a long
    backlog): a few self-continuing tasks, so that a false alarm adds little and the work is
    still done. The caller enqueues after this commit.
    """
    recent = now - stall
    claimable = (
        select(
            Delivery.edition_id,
            func.count().label("n"),
            func.max(Delivery.not_before).label("due_at"),
        )
        .where(_claimable(now))
        .group_by(Delivery.edition_id)
        .subquery()
    )
    last_claim = (
        select(func.max(Delivery.claimed_at))
        .where(Delivery.edition_id == Edition.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Edition.id, Edition.dispatched_at, claimable.c.n, claimable.c.due_at)
        .join(claimable, claimable.c.edition_id == Edition.id)
        .where(
            or_(
                Edition.dispatched_at.is_(None),
                claimable.c.due_at > Edition.dispatched_at,
                (Edition.dispatched_at < recent) & or_(last_claim.is_(None), last_claim < recent),
            )
        )
    ).all()
    due = {}
    for edition_id, dispatched_at, n, due_at in rows:
        batches = math.ceil(n / batch_size)
        if dispatched_at is None or (due_at is not None and due_at > dispatched_at):
            if due_at is not None:
                # A local-time bucket came due: its readers get the news as of now.
                extend_pool(session, session.get_one(Edition, edition_id), due_at)
            due[edition_id] = Dispatch(batches, continuing=False)
        else:
            due[edition_id] = Dispatch(min(batches, RECOVERY_TASKS), continuing=True)
    if due:
        session.execute(
            update(Edition)
            .where(Edition.id.in_(due))
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return due


def has_claimable(session: Session, edition_id: int, now: datetime) -> bool:
    return (
        session.scalar(
            select(Delivery.id).where(Delivery.edition_id == edition_id, _claimable(now)).limit(1)
        )
        is not None
    )


def delivery_counts(session: Session, edition_id: int) -> dict[DeliveryState, int]:
    """The edition's progress, derived from its rows (there is no stored status to drift)."""
    rows = session.execute(
        select(Delivery.state, func.count())
        .where(Delivery.edition_id == edition_id)
        .group_by(Delivery.state)
    ).all()
    counts = dict.fromkeys(DeliveryState, 0)
    counts.update({DeliveryState(state): n for state, n in rows})
    return counts
