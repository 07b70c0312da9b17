"""A subscriber's rights over their data (GDPR articles 15, 17 and 20): everything we hold
about one address, as JSON, and its erasure.

Erasure removes what identifies the person and keeps what the counts need: the subscriber
row stays with a placeholder address (deliveries, opens and clicks still add up to an
edition's numbers), the network and user agent of each event are removed (and kept from
later events: tracking is off for the row), relay replies and bounce texts that quote the
address are blanked, and the address goes on the suppression list as a hash, so that no
later import brings it back. The consent log holds no personal data (a hash and a truncated
network) and is kept: it is the proof of what the person agreed to and when, which the law
asks us to be able to show.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest.models import (
    Bounce,
    Click,
    ConsentEvent,
    Delivery,
    Edition,
    Newsletter,
    Open,
    Subscriber,
    SubscriberStatus,
    Subscription,
    Suppression,
    utcnow,
)
from digest.subscriptions import address_hash, log_consent, normalise_email, suppress


def _subscriber(session: Session, email: str) -> Subscriber | None:
    return session.scalars(
        select(Subscriber).where(Subscriber.email == normalise_email(email))
    ).first()


def _iso(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value


def personal_data(session: Session, email: str) -> dict[str, Any] | None:
    """Everything held about the address, or None if we hold nothing but its hash."""
    subscriber = _subscriber(session, email)
    hashed = address_hash(normalise_email(email))
    consent = session.execute(
        select(
            ConsentEvent.created_at,
            ConsentEvent.action,
            ConsentEvent.source,
            ConsentEvent.newsletter_id,
            ConsentEvent.ip_prefix,
            ConsentEvent.consent_version,
        )
        .where(ConsentEvent.address_hash == hashed)
        .order_by(ConsentEvent.id)
    ).all()
    if subscriber is None:
        return {"consent_log": [_row(r) for r in consent]} if consent else None
    subscriptions = session.execute(
        select(
            Newsletter.slug,
            Subscription.active,
            Subscription.created_at,
            Subscription.confirmed_at,
            Subscription.unsubscribed_at,
            Subscription.frequency,
            Subscription.sections,
            Subscription.send_hour,
            Subscription.paused_until,
        )
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.subscriber_id == subscriber.id)
    ).all()
    deliveries = session.execute(
        select(
            Delivery.id,
            Edition.issue_date,
            Edition.subject,
            Delivery.state,
            Delivery.sent_at,
            Delivery.last_error,
        )
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Delivery.id)
    ).all()
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber.id)
    opens = session.execute(
        select(Open.delivery_id, Open.opened_at, Open.ip_prefix, Open.user_agent, Open.kind)
        .where(Open.delivery_id.in_(delivery_ids))
        .order_by(Open.id)
    ).all()
    clicks = session.execute(
        select(Click.delivery_id, Click.clicked_at, Click.ip_prefix, Click.user_agent, Click.kind)
        .where(Click.delivery_id.in_(delivery_ids))
        .order_by(Click.id)
    ).all()
    bounces = session.execute(
        select(Bounce.delivery_id, Bounce.received_at, Bounce.kind, Bounce.status, Bounce.detail)
        .where(Bounce.subscriber_id == subscriber.id)
        .order_by(Bounce.id)
    ).all()
    return {
        "subscriber": {
            "email": subscriber.email,
            "name": subscriber.name,
            "status": subscriber.status.value,
            "timezone": subscriber.timezone,
            "tracking_enabled": subscriber.tracking_enabled,
            "created_at": subscriber.created_at.isoformat(),
        },
        "subscriptions": [_row(r) for r in subscriptions],
        "deliveries": [_row(r) for r in deliveries],
        "opens": [_row(r) for r in opens],
        "clicks": [_row(r) for r in clicks],
        "bounces": [_row(r) for r in bounces],
        "consent_log": [_row(r) for r in consent],
    }


def _row(row: Any) -> dict[str, Any]:
    return {key: _iso(value) for key, value in row._asdict().items()}


def erase_subscriber(session: Session, email: str) -> bool:
    """Erase the person behind the address; False if there is no such subscriber. Commits."""
    subscriber = _subscriber(session, email)
    if subscriber is None:
        return False
    address = subscriber.email
    suppress(session, address, "erasure")
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber.id)
    for model in (Open, Click):
        session.execute(
            update(model)
            .where(model.delivery_id.in_(delivery_ids))
            .values(ip_prefix=None, user_agent=None)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(Subscription)
        .where(Subscription.subscriber_id == subscriber.id)
        .values(active=False, sections=None, send_hour=None, paused_until=None)
        .execution_options(synchronize_session=False)
    )
    # Relay replies and bounce texts quote the address.
    session.execute(
        update(Bounce)
        .where(Bounce.subscriber_id == subscriber.id)
        .values(detail="")
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber.id, Delivery.last_error.is_not(None))
        .values(last_error="")
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Suppression)
        .where(Suppression.address_hash == address_hash(address))
        .values(detail="")
        .execution_options(synchronize_session=False)
    )
    subscriber.email = f"erased-{subscriber.id}@erased.invalid"
    subscriber.name = ""
    subscriber.timezone = "UTC"
    subscriber.tracking_enabled = False
    subscriber.status = SubscriberStatus.ERASED
    log_consent(session, address, None, "erased", "request", now=utcnow())
    session.commit()
    return True
