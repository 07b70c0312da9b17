"""Who receives a newsletter."""

from __future__ import annotations

from email.utils import parseaddr

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)


class InvalidAddress(ValueError):
    pass


def normalise_email(raw: str) -> str:
    """Lower-cased address, or InvalidAddress; header-breaking characters are never accepted,
    nor non-ASCII ones (sending to them needs SMTPUTF8, which relays may not offer)."""
    name, address = parseaddr(raw)
    address = address.strip().lower()
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain or any(c in raw for c in "\r\n\0") or name:
        raise InvalidAddress(f"{raw!r} is not a plain email address")
    if not address.isascii() or " " in address:
        raise InvalidAddress(f"{raw!r}: only ASCII addresses without spaces can be sent to")
    return address


def subscribe_active(
    session: Session, newsletter: Newsletter, email: str, name: str = ""
) -> Subscriber:
    """Add an already-confirmed subscriber (imports, the demo); idempotent per address."""
    address = normalise_email(email)
    subscriber = session.scalars(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None:
        subscriber = Subscriber(email=address, name=name, status=SubscriberStatus.ACTIVE)
        session.add(subscriber)
        session.flush()
    subscription = session.scalars(
        select(Subscription).where(
            Subscription.newsletter_id == newsletter.id,
            Subscription.subscriber_id == subscriber.id,
        )
    ).first()
    if subscription is None:
        session.add(Subscription(newsletter_id=newsletter.id, subscriber_id=subscriber.id))
    return subscriber


def unsubscribe(
    session: Session, subscriber_id: int, newsletter_id: int, delivery_id: int | None = None
) -> Newsletter | None:
    """End the subscription at once; returns the newsletter, or None if it is unknown.

    "At once" includes editions already being sent: the subscriber's deliveries that have not
    gone out are cancelled in the same transaction, and a worker that claimed one finds it
    cancelled before its message goes out.
    """
    session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id == subscriber_id,
            Subscription.newsletter_id == newsletter_id,
        )
        .values(active=False)
    )
    session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
            Delivery.edition_id.in_(
                select(Edition.id).where(Edition.newsletter_id == newsletter_id)
            ),
        )
        .values(state=DeliveryState.CANCELLED, last_error="unsubscribed", lease_until=None)
        .execution_options(synchronize_session=False)
    )
    if delivery_id is not None:
        # Attributed to the edition the reader left from (once: a second click changes nothing).
        session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.subscriber_id == subscriber_id,
                Delivery.unsubscribed_at.is_(None),
            )
            .values(unsubscribed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return session.get(Newsletter, newsletter_id)
