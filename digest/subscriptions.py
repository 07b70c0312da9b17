"""Who receives a newsletter, and on what terms: sign-up with double opt-in, preferences,
unsubscribe, the suppression list and the consent log.

Invariants:
- A subscription receives editions only while ``active``: confirmed, not unsubscribed. A
  subscriber receives anything only while ``ACTIVE``: never when suppressed or erased.
- Every change of consent (requested, confirmed, imported, unsubscribed, suppressed, erased)
  appends one ConsentEvent in the same transaction as the change itself.
- A suppressed address is known by its hash alone, so the suppression outlives an erasure,
  and neither a sign-up nor an import brings the address back.
- Leaving takes effect at once: the subscriber's unsent deliveries are cancelled in the same
  transaction, and a worker holding one of them in a claimed batch finds it cancelled before
  its message goes out (digest.sending checks the state as it enters the SMTP window).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.db import upsert_insert
from digest.models import (
    ConsentEvent,
    Delivery,
    DeliveryState,
    Edition,
    Frequency,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    Suppression,
    utcnow,
)

# Sign-up requests that send a confirmation message: at most this many per address a day and
# per network (/24, /48) an hour, so nobody can use the form to flood a stranger's inbox.
CONFIRMATIONS_PER_ADDRESS_PER_DAY = 3
CONFIRMATIONS_PER_NETWORK_PER_HOUR = 20


class InvalidAddress(ValueError):
    pass


class PreferenceError(ValueError):
    """A preference the newsletter does not offer, or a value out of range."""


def normalise_email(raw: str) -> str:
    """The address lower-cased, or InvalidAddress saying what is wrong with it.

    email-validator checks the syntax without DNS look-ups (an import of 100,000 rows must not
    wait on resolvers). Non-ASCII local parts are refused: sending to them needs SMTPUTF8,
    which relays may not offer.
    """
    if any(c in raw for c in "\r\n\0"):
        raise InvalidAddress("an address cannot contain line breaks or NUL characters")
    try:
        checked = validate_email(
            raw.strip(), check_deliverability=False, allow_smtputf8=False, allow_quoted_local=False
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{raw.strip()!r}: {exc}") from None
    return checked.normalized.lower()


def address_hash(address: str) -> str:
    """The key of an address in the suppression list and the consent log. Unsalted on
    purpose: the list must recognise the address again after every key rotation."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def consent_version(text: str) -> str:
    """Which wording of the consent text someone agreed to."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def log_consent(
    session: Session,
    address: str,
    newsletter_id: int | None,
    action: str,
    source: str,
    *,
    ip_prefix: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> None:
    session.add(
        ConsentEvent(
            address_hash=address_hash(address),
            newsletter_id=newsletter_id,
            action=action,
            source=source,
            ip_prefix=ip_prefix,
            consent_version=version,
            created_at=now or utcnow(),
        )
    )


def is_suppressed(session: Session, address: str) -> bool:
    return session.get(Suppression, address_hash(address)) is not None


def _cancel_unsent(session: Session, subscriber_id: int, newsletter_id: int | None) -> None:
    """Cancel the subscriber's deliveries that have not gone out (of one newsletter, or all)."""
    query = update(Delivery).where(
        Delivery.subscriber_id == subscriber_id,
        Delivery.state.in_((DeliveryState.QUEUED, DeliveryState.DEFERRED)),
    )
    if newsletter_id is not None:
        query = query.where(
            Delivery.edition_id.in_(
                select(Edition.id).where(Edition.newsletter_id == newsletter_id)
            )
        )
    session.execute(
        query.values(
            state=DeliveryState.CANCELLED, last_error="unsubscribed", lease_until=None
        ).execution_options(synchronize_session=False)
    )


def suppress(session: Session, address: str, reason: str, detail: str = "") -> None:
    """Put the address on the suppression list (idempotent) and stop everything to it.

    The caller commits.
    """
    session.execute(
        upsert_insert(session, Suppression)
        .values(
            address_hash=address_hash(address),
            reason=reason,
            detail=detail[:500],
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["address_hash"])
    )
    subscriber = session.scalars(
        select(Subscriber).where(Subscriber.email == address.strip().lower())
    ).first()
    if subscriber is not None and subscriber.status != SubscriberStatus.ERASED:
        subscriber.status = SubscriberStatus.SUPPRESSED
        _cancel_unsent(session, subscriber.id, None)
    log_consent(session, address, None, "suppressed", reason)


def _subscription(session: Session, subscriber_id: int, newsletter_id: int) -> Subscription | None:
    return session.scalars(
        select(Subscription).where(
            Subscription.newsletter_id == newsletter_id,
            Subscription.subscriber_id == subscriber_id,
        )
    ).first()


def subscribe_active(
    session: Session, newsletter: Newsletter, email: str, name: str = ""
) -> Subscriber:
    """Add an already-confirmed subscriber (the demo, tests); idempotent per address.
    Imports go through digest.subscriber_csv, which applies the import rules."""
    address = normalise_email(email)
    subscriber = session.scalars(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None:
        subscriber = Subscriber(email=address, name=name, status=SubscriberStatus.ACTIVE)
        session.add(subscriber)
        session.flush()
    if _subscription(session, subscriber.id, newsletter.id) is None:
        session.add(
            Subscription(
                newsletter_id=newsletter.id, subscriber_id=subscriber.id, confirmed_at=utcnow()
            )
        )
    return subscriber


@dataclass(frozen=True)
class SignUp:
    """What a sign-up request led to. ``confirm_to`` is set when a confirmation message is
    due; the form shows the same answer whatever happened, so it reveals nobody's status."""

    subscriber_id: int | None
    confirm_to: str | None
    reason: str


def request_subscription(
    session: Session,
    newsletter: Newsletter,
    email: str,
    *,
    name: str = "",
    ip_prefix: str | None,
    now: datetime,
) -> SignUp:
    """Record a sign-up from the public form and decide whether to send a confirmation.

    Raises InvalidAddress for an address we could never send to. Commits.
    """
    address = normalise_email(email)
    # Sign-ups to one newsletter are taken one at a time: the limits below count what earlier
    # requests logged, which a concurrent request must see. A no-op write takes the lock on
    # both backends (PostgreSQL's row lock, SQLite's write lock); sign-ups are few enough.
    session.execute(
        update(Newsletter)
        .where(Newsletter.id == newsletter.id)
        .values(id=Newsletter.id)
        .execution_options(synchronize_session=False)
    )
    if is_suppressed(session, address):
        session.rollback()
        return SignUp(None, None, "suppressed")
    subscriber = session.scalars(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is not None:
        subscription = _subscription(session, subscriber.id, newsletter.id)
        if subscription is not None and subscription.active:
            session.rollback()  # releases the sign-up lock
            return SignUp(subscriber.id, None, "already subscribed")
    limits = [
        (ConsentEvent.address_hash == address_hash(address), timedelta(days=1),
         CONFIRMATIONS_PER_ADDRESS_PER_DAY, "too many requests for this address"),
    ]  # fmt: skip
    if ip_prefix is not None:
        limits.append(
            (ConsentEvent.ip_prefix == ip_prefix, timedelta(hours=1),
             CONFIRMATIONS_PER_NETWORK_PER_HOUR, "too many requests from this network")
        )  # fmt: skip
    for requester, window, allowed, refusal in limits:
        requested = session.scalar(
            select(func.count())
            .select_from(ConsentEvent)
            .where(
                requester,
                ConsentEvent.action == "requested",
                ConsentEvent.created_at > now - window,
            )
        )
        if requested >= allowed:
            session.rollback()  # releases the sign-up lock
            return SignUp(None, None, refusal)
    if subscriber is None:
        subscriber = Subscriber(email=address, name=name[:200], status=SubscriberStatus.PENDING)
        try:
            with session.begin_nested():
                session.add(subscriber)
                session.flush()
        except IntegrityError:
            # Signed up to another newsletter at this very moment (that lock is not ours):
            # that request sends its confirmation; answering alike reveals nothing.
            session.rollback()
            return SignUp(None, None, "signing up concurrently")
    elif subscriber.status == SubscriberStatus.ERASED:
        session.rollback()  # releases the sign-up lock
        return SignUp(None, None, "erased")  # its row holds no address any more; unreachable
    if _subscription(session, subscriber.id, newsletter.id) is None:
        session.add(
            Subscription(newsletter_id=newsletter.id, subscriber_id=subscriber.id, active=False)
        )
    log_consent(
        session,
        address,
        newsletter.id,
        "requested",
        "form",
        ip_prefix=ip_prefix,
        version=consent_version(newsletter.consent_text),
        now=now,
    )
    session.commit()
    return SignUp(subscriber.id, address, "confirmation sent")


def confirm_subscription(
    session: Session, subscriber_id: int, newsletter_id: int, *, ip_prefix: str | None
) -> Subscription | None:
    """Activate a subscription from its confirmation link; idempotent. None when there is
    nothing to confirm (unknown, erased or suppressed). Commits."""
    subscriber = session.get(Subscriber, subscriber_id)
    subscription = _subscription(session, subscriber_id, newsletter_id)
    if subscriber is None or subscription is None:
        return None
    if subscriber.status in (SubscriberStatus.ERASED, SubscriberStatus.SUPPRESSED) or (
        is_suppressed(session, subscriber.email)
    ):
        return None
    if subscription.active:
        return subscription
    now = utcnow()
    subscription.active = True
    subscription.confirmed_at = now
    subscription.unsubscribed_at = None
    subscriber.status = SubscriberStatus.ACTIVE
    newsletter = session.get_one(Newsletter, newsletter_id)
    log_consent(
        session,
        subscriber.email,
        newsletter_id,
        "confirmed",
        "confirmation link",
        ip_prefix=ip_prefix,
        version=consent_version(newsletter.consent_text),
        now=now,
    )
    session.commit()
    return subscription


def unsubscribe(
    session: Session,
    subscriber_id: int,
    newsletter_id: int,
    delivery_id: int | None = None,
    *,
    source: str = "one-click",
) -> Newsletter | None:
    """End the subscription at once; returns the newsletter, or None if it is unknown.
    Idempotent: a second request changes nothing and logs nothing. Commits."""
    subscriber = session.get(Subscriber, subscriber_id)
    subscription = _subscription(session, subscriber_id, newsletter_id)
    if subscriber is None or subscription is None:
        return None
    now = utcnow()
    if subscription.active or subscription.unsubscribed_at is None:
        subscription.active = False
        subscription.unsubscribed_at = now
        log_consent(session, subscriber.email, newsletter_id, "unsubscribed", source, now=now)
    _cancel_unsent(session, subscriber_id, newsletter_id)
    if delivery_id is not None:
        # Attributed to the edition the reader left from (once: a second click changes nothing).
        session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.subscriber_id == subscriber_id,
                Delivery.unsubscribed_at.is_(None),
            )
            .values(unsubscribed_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return session.get(Newsletter, newsletter_id)


@dataclass(frozen=True)
class Preferences:
    sections: list[str] | None
    frequency: Frequency
    send_hour: int | None
    timezone: str
    paused_until: date | None


def current_preferences(subscriber: Subscriber, subscription: Subscription) -> Preferences:
    return Preferences(
        sections=subscription.sections,
        frequency=subscription.frequency,
        send_hour=subscription.send_hour,
        timezone=subscriber.timezone,
        paused_until=subscription.paused_until,
    )


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PreferenceError(f"{name!r} is not a time zone (e.g. Europe/Berlin)") from None
    return name


def update_preferences(
    session: Session, subscriber_id: int, newsletter_id: int, preferences: Preferences
) -> Subscription:
    """Store the reader's choices. Raises PreferenceError, changing nothing, for a choice
    the newsletter does not offer. Saving counts as being engaged: a sunset is lifted."""
    subscriber = session.get_one(Subscriber, subscriber_id)
    subscription = _subscription(session, subscriber_id, newsletter_id)
    if subscription is None:
        raise PreferenceError("there is no such subscription")
    newsletter = session.get_one(Newsletter, newsletter_id)
    if preferences.sections is not None:
        unknown = set(preferences.sections) - set(newsletter.sections)
        if unknown:
            raise PreferenceError(f"no such section: {', '.join(sorted(unknown))}")
        if not preferences.sections:
            raise PreferenceError("choose at least one section, or unsubscribe")
    if preferences.send_hour is not None and not 0 <= preferences.send_hour <= 23:
        raise PreferenceError("the send hour is a whole hour from 0 to 23")
    subscriber.timezone = check_timezone(preferences.timezone)
    subscription.sections = preferences.sections
    subscription.frequency = preferences.frequency
    subscription.send_hour = preferences.send_hour
    subscription.paused_until = preferences.paused_until
    subscription.reengagement_sent_at = None
    subscription.sunset_at = None
    subscription.kept_at = utcnow()
    session.commit()
    return subscription


def load_subscription(
    session: Session, subscriber_id: int, newsletter_id: int
) -> tuple[Subscriber, Subscription, Newsletter] | None:
    """The three rows a signed link names, or None if any is gone or erased."""
    subscriber = session.get(Subscriber, subscriber_id)
    subscription = _subscription(session, subscriber_id, newsletter_id)
    newsletter = session.get(Newsletter, newsletter_id)
    if subscriber is None or subscription is None or newsletter is None:
        return None
    if subscriber.status == SubscriberStatus.ERASED:
        return None
    return subscriber, subscription, newsletter
