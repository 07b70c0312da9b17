"""Sending an edition: claim a batch, render and hand over each message, record the outcome.

Lifecycle of a delivery (DESIGN, rule 3)::

    queued ──claim──▶ sending ──▶ sent | deferred | failed | unknown
      ▲                               │
      └──── reconcile (when due) ─────┘ deferred only

Invariants:
- A batch is claimed by one atomic UPDATE … RETURNING; two workers never get the same row.
- A row is marked with its outcome right after its hand-over and committed at once, so a crash
  leaves at most the message being handed over in ``sending``. When its lease runs out the
  reconciler marks it ``unknown``: it may have been delivered, so it is never resent.
- Rows claimed but not yet handed over when a batch stops early go back to ``queued``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.mail import (
    PermanentError,
    Sender,
    TransientError,
    UncertainOutcome,
    compose,
    open_sender,
)
from digest.models import Delivery, DeliveryState, Edition, Link, Subscriber, utcnow
from digest.render import render_edition
from digest.tokens import TokenSigner

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
STALL = timedelta(minutes=5)
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    subscriber_id: int
    email: str
    tracking: bool


def claim_batch(session: Session, edition_id: int, limit: int, now: datetime) -> list[int]:
    """Atomically move up to ``limit`` queued deliveries of the edition to ``sending``."""
    pick = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.state == DeliveryState.QUEUED)
        .order_by(Delivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Concurrent claimers skip each other's rows instead of queueing on the row locks.
        # (SQLite serialises writers anyway and would silently drop the clause.)
        pick = pick.with_for_update(skip_locked=True)
    claimed = session.scalars(
        update(Delivery)
        .where(Delivery.id.in_(pick), Delivery.state == DeliveryState.QUEUED)
        .values(
            state=DeliveryState.SENDING,
            lease_until=now + LEASE,
            claimed_at=now,
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(claimed)


def _mark(session: Session, delivery_id: int, state: DeliveryState, **values: object) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.SENDING)
        .values(state=state, lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _release(session: Session, delivery_ids: list[int]) -> None:
    if not delivery_ids:
        return
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.SENDING)
        .values(state=DeliveryState.QUEUED, lease_until=None, attempts=Delivery.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def retry_delay(attempt: int) -> timedelta:
    """Exponential backoff with full jitter, so deferred rows do not return in one wave."""
    return RETRY_BASE * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def message_id(settings: Settings, edition_id: int, delivery_id: int) -> str:
    """Stable per delivery (a resend is recognisably the same message), unguessable across
    installations that share a domain."""
    mac = hmac.new(
        settings.secret_keys[0].encode(), f"{edition_id}.{delivery_id}".encode(), hashlib.sha256
    ).hexdigest()[:12]
    return f"<{edition_id}.{delivery_id}.{mac}@{settings.sender_domain}>"


class EditionMailer:
    """Everything needed to build one edition's messages, loaded once per batch."""

    def __init__(self, session: Session, settings: Settings, edition: Edition) -> None:
        self.settings = settings
        self.edition = edition
        self.newsletter = edition.newsletter
        self.signer = TokenSigner(settings.secret_keys)
        self.link_urls = dict(
            session.execute(select(Link.id, Link.url).where(Link.edition_id == edition.id)).all()
        )

    def message(self, recipient: Recipient, now: datetime) -> bytes:
        base = self.settings.base_url

        def href(link_id: int) -> str:
            if not recipient.tracking:
                return self.link_urls[link_id]
            return f"{base}/c/{self.signer.click_token(link_id, recipient.delivery_id)}"

        pixel = (
            f"{base}/o/{self.signer.open_token(recipient.delivery_id)}"
            if recipient.tracking
            else None
        )
        rendered = render_edition(
            self.newsletter.name,
            self.edition.subject,
            self.edition.preheader,
            self.edition.content,
            href,
            pixel,
        )
        list_id = f"{self.newsletter.slug}.{self.settings.sender_domain}"
        unsubscribe = (
            f"{base}/u/{self.signer.unsubscribe_token(recipient.subscriber_id, self.newsletter.id)}"
        )
        return compose(
            sender=self.newsletter.from_address or self.settings.from_address,
            recipient=recipient.email,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id(self.settings, self.edition.id, recipient.delivery_id),
            date=now,
            headers=[
                ("List-Id", f"{self.newsletter.name} <{list_id}>"),
                ("List-Unsubscribe", f"<{unsubscribe}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
        )


def _hand_over(
    session: Session, mailer: EditionMailer, sender: Sender, recipient: Recipient, message: bytes
) -> DeliveryState:
    key = f"{mailer.edition.id}-{recipient.delivery_id}"
    try:
        sender.send(mailer.settings.from_address, recipient.email, message, key)
    except UncertainOutcome as exc:
        _mark(session, recipient.delivery_id, DeliveryState.UNKNOWN, last_error=str(exc))
        return DeliveryState.UNKNOWN
    except PermanentError as exc:
        _mark(session, recipient.delivery_id, DeliveryState.FAILED, last_error=str(exc))
        return DeliveryState.FAILED
    except TransientError as exc:
        attempts = session.scalar(
            select(Delivery.attempts).where(Delivery.id == recipient.delivery_id)
        )
        if attempts is None or attempts >= MAX_ATTEMPTS:
            _mark(session, recipient.delivery_id, DeliveryState.FAILED, last_error=str(exc))
            return DeliveryState.FAILED
        _mark(
            session,
            recipient.delivery_id,
            DeliveryState.DEFERRED,
            last_error=str(exc),
            next_attempt_at=utcnow() + retry_delay(attempts),
        )
        return DeliveryState.DEFERRED
    _mark(session, recipient.delivery_id, DeliveryState.SENT, sent_at=utcnow(), last_error=None)
    return DeliveryState.SENT


def send_batch(
    sessions: sessionmaker[Session], settings: Settings, edition_id: int
) -> Counter[DeliveryState]:
    """Claim and send the next batch of the edition; returns the outcomes (empty when there
    was nothing left to claim)."""
    outcomes: Counter[DeliveryState] = Counter()
    with sessions() as session:
        ids = claim_batch(session, edition_id, settings.batch_size, utcnow())
        if not ids:
            return outcomes
        edition = session.get_one(Edition, edition_id)
        mailer = EditionMailer(session, settings, edition)
        recipients = [
            Recipient(*row)
            for row in session.execute(
                select(Delivery.id, Subscriber.id, Subscriber.email, Subscriber.tracking_enabled)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.id.in_(ids))
                .order_by(Delivery.id)
            ).all()
        ]
        settled: set[int] = set()
        in_window: int | None = None
        try:
            with open_sender(settings.smtp_url) as sender:
                for recipient in recipients:
                    message = mailer.message(recipient, utcnow())
                    in_window = recipient.delivery_id
                    outcomes[_hand_over(session, mailer, sender, recipient, message)] += 1
                    settled.add(recipient.delivery_id)
                    in_window = None
        finally:
            # Whatever stopped the batch early, rows never handed over go back to the queue.
            # The one inside the hand-over stays in ``sending`` and is settled by its lease:
            # it may have stopped inside the SMTP window.
            _release(
                session,
                [
                    r.delivery_id
                    for r in recipients
                    if r.delivery_id not in settled and r.delivery_id != in_window
                ],
            )
    log.info("edition %s batch: %s", edition_id, dict(outcomes))
    return outcomes


def reconcile(session: Session, now: datetime) -> dict[str, int]:
    """Settle what the database says is overdue: expired leases and due retries."""
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
    due = select(Delivery.edition_id).where(
        Delivery.state == DeliveryState.DEFERRED, Delivery.next_attempt_at <= now
    )
    session.execute(
        update(Edition)
        .where(Edition.id.in_(due))
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    retried = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.DEFERRED, Delivery.next_attempt_at <= now)
        .values(state=DeliveryState.QUEUED, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return {"expired": expired, "retried": retried}


def editions_to_dispatch(session: Session, now: datetime) -> dict[int, int]:
    """Editions with queued deliveries that no worker is working on: {edition id: queued}.

    An edition counts as worked on if it was dispatched recently or a batch of it was claimed
    recently; otherwise its send messages were lost (or never sent) and are due again. The
    caller enqueues after this commit.
    """
    recent = now - STALL
    queued = (
        select(Delivery.edition_id, func.count().label("queued"))
        .where(Delivery.state == DeliveryState.QUEUED)
        .group_by(Delivery.edition_id)
        .subquery()
    )
    last_claim = (
        select(func.max(Delivery.claimed_at))
        .where(Delivery.edition_id == Edition.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Edition.id, queued.c.queued)
        .join(queued, queued.c.edition_id == Edition.id)
        .where(
            or_(
                Edition.dispatched_at.is_(None),
                (Edition.dispatched_at < recent) & or_(last_claim.is_(None), last_claim < recent),
            )
        )
    ).all()
    due = {edition_id: count for edition_id, count in rows}
    if due:
        session.execute(
            update(Edition)
            .where(Edition.id.in_(due))
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return due


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
