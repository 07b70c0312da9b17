"""Sunset: stop mailing readers who stopped reading, because mailbox providers judge a sender
by how many of its messages nobody opens.

A subscription whose last SUNSET_EDITIONS sent editions drew no human open or click gets one
re-engagement message (a link to the preference centre; saving there keeps them). If nothing
human follows within REENGAGEMENT_GRACE, the subscription is paused by the sunset: still
subscribed, no more editions, undone by saving preferences.

Only readers we can observe are judged: with tracking off (for the installation or the
reader) no open or click is ever recorded, and silence would prove nothing. Apple Mail
Privacy Protection prefetches are not human opens, so a reader who only reads in Apple Mail
and never clicks will see the re-engagement message: one message, and one click keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select, update
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.mail import TransportError
from digest.models import (
    Click,
    ClickKind,
    Delivery,
    DeliveryState,
    Edition,
    Newsletter,
    Open,
    OpenKind,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from digest.notices import NoticeSender, send_notice
from digest.tokens import TokenSigner

log = logging.getLogger(__name__)

REENGAGEMENT_GRACE = timedelta(days=14)


@dataclass(frozen=True)
class SunsetResult:
    reengaged: int
    paused: int
    back: int


def _engaged(
    delivery_id: ColumnElement[int], since: ColumnElement[datetime] | None = None
) -> ColumnElement[bool]:
    """A human open or click of the delivery (after ``since``, if given)."""
    opened = [Open.delivery_id == delivery_id, Open.kind == OpenKind.HUMAN]
    clicked = [Click.delivery_id == delivery_id, Click.kind == ClickKind.HUMAN]
    if since is not None:
        opened.append(Open.opened_at > since)
        clicked.append(Click.clicked_at > since)
    return or_(exists().where(*opened), exists().where(*clicked))


def _observable() -> ColumnElement[bool]:
    return and_(
        Subscription.active.is_(True),
        Subscription.sunset_at.is_(None),
        Subscriber.status == SubscriberStatus.ACTIVE,
        Subscriber.tracking_enabled.is_(True),
    )


def _settle_reengaged(session: Session, now: datetime) -> tuple[int, int]:
    """Subscriptions that were sent the re-engagement message: back if a human open or click
    came since, paused once the grace period is over. Returns (back, paused)."""
    # Any edition of this newsletter read since the message, an old one included.
    engaged_since = exists().where(
        Delivery.subscriber_id == Subscription.subscriber_id,
        Delivery.edition_id == Edition.id,
        Edition.newsletter_id == Subscription.newsletter_id,
        _engaged(Delivery.id, Subscription.reengagement_sent_at),
    )
    waiting = (
        select(Subscription.id)
        .join(Subscriber)
        .where(_observable(), Subscription.reengagement_sent_at.is_not(None))
    )
    back = session.execute(
        update(Subscription)
        .where(Subscription.id.in_(waiting.where(engaged_since)))
        .values(reengagement_sent_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    paused = session.execute(
        update(Subscription)
        .where(
            Subscription.id.in_(
                waiting.where(Subscription.reengagement_sent_at < now - REENGAGEMENT_GRACE)
            )
        )
        .values(sunset_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return back, paused


def _silent(session: Session, editions: int) -> list[tuple[int, int, str, int]]:
    """(subscription id, subscriber id, email, newsletter id) of observable subscriptions whose
    last ``editions`` sent deliveries drew nothing human."""
    ranked = (
        select(
            Delivery.subscriber_id,
            Edition.newsletter_id,
            case((_engaged(Delivery.id), 1), else_=0).label("engaged"),
            func.row_number()
            .over(
                partition_by=(Delivery.subscriber_id, Edition.newsletter_id),
                order_by=Delivery.sent_at.desc(),
            )
            .label("rank"),
        )
        .join(Edition, Edition.id == Delivery.edition_id)
        .join(
            Subscription,
            and_(
                Subscription.subscriber_id == Delivery.subscriber_id,
                Subscription.newsletter_id == Edition.newsletter_id,
            ),
        )
        # A reader who said "keep sending" is judged on what came after.
        .where(
            Delivery.state == DeliveryState.SENT,
            or_(Subscription.kept_at.is_(None), Delivery.sent_at > Subscription.kept_at),
        )
        .subquery()
    )
    silent = (
        select(ranked.c.subscriber_id, ranked.c.newsletter_id)
        .where(ranked.c.rank <= editions)
        .group_by(ranked.c.subscriber_id, ranked.c.newsletter_id)
        .having(func.count() == editions, func.max(ranked.c.engaged) == 0)
        .subquery()
    )
    rows = session.execute(
        select(Subscription.id, Subscriber.id, Subscriber.email, Subscription.newsletter_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .join(
            silent,
            and_(
                silent.c.subscriber_id == Subscription.subscriber_id,
                silent.c.newsletter_id == Subscription.newsletter_id,
            ),
        )
        .where(_observable(), Subscription.reengagement_sent_at.is_(None))
        .order_by(Subscription.id)
    ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def run_sunset(session: Session, settings: Settings, now: datetime) -> SunsetResult:
    if not settings.tracking:
        return SunsetResult(0, 0, 0)
    back, paused = _settle_reengaged(session, now)
    signer = TokenSigner(settings.secret_keys)
    reengaged = 0
    for subscription_id, subscriber_id, email, newsletter_id in _silent(
        session, settings.sunset_editions
    ):
        newsletter = session.get_one(Newsletter, newsletter_id)
        keep = signer.preferences_token(subscriber_id, newsletter_id)
        leave = signer.unsubscribe_token(subscriber_id, newsletter_id)
        unsubscribe = f"{settings.base_url}/u/{leave}"
        try:
            send_notice(
                settings,
                NoticeSender(newsletter.name, newsletter.from_address),
                email,
                "reengage",
                {"keep_url": f"{settings.base_url}/p/{keep}"},
                # A list message like the editions: the reader may leave in one click.
                [
                    ("List-Unsubscribe", f"<{unsubscribe}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ],
            )
        except TransportError as exc:
            log.warning("re-engagement message to subscriber %s not sent: %s", subscriber_id, exc)
            break  # the relay is the problem; the rest go on the next run
        # Marked after the send: a crash in between sends one message twice at worst, where
        # marking first could pause a reader who was never asked.
        session.execute(
            update(Subscription)
            .where(Subscription.id == subscription_id)
            .values(reengagement_sent_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        reengaged += 1
    return SunsetResult(reengaged=reengaged, paused=paused, back=back)
