"""Local-time delivery: an edition that goes out at 07:00 goes out at 07:00 where each reader
lives. Deliveries are grouped into buckets of (time zone, send hour) when the edition is
prepared, and each bucket's rows carry the moment they may be claimed (``not_before``); the
claim (digest.sending) passes over rows whose moment has not come, and the beat's dispatch
sends them when it has.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from digest.models import Delivery, Newsletter, Subscriber, Subscription


def next_local_hour(now: datetime, timezone: str, hour: int) -> datetime:
    """The moment (UTC) a reader in ``timezone`` who wants the edition at ``hour`` should get
    it: now if that hour is under way there, else its next start. A zone that no longer
    exists (tzdata renames) counts as UTC rather than holding the message back."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    if local.hour == hour:
        return now
    day = local.date() if local.hour < hour else local.date() + timedelta(days=1)
    # Built from the wall-clock time, so a DST change between now and then is applied.
    return datetime.combine(day, time(hour), tzinfo=zone).astimezone(UTC)


def schedule_local_sends(
    session: Session, edition_id: int, newsletter: Newsletter, now: datetime
) -> None:
    """Give the edition's deliveries their moment, one UPDATE per (time zone, send hour)
    bucket: the reader's own send hour, else the newsletter's local one; readers with neither
    are sent at once. Runs in the transaction that writes the deliveries, so an edition is
    never seen half scheduled.

    The buckets are read first and each UPDATE matches readers by their zone and hour as they
    are then, so a reader who moves to a zone nobody else is in between the two would be left
    unscheduled (and sent at once): another pass over the rows still unscheduled takes them.
    """
    while _schedule_pass(session, edition_id, newsletter, now):
        pass


def _schedule_pass(session: Session, edition_id: int, newsletter: Newsletter, now: datetime) -> int:
    """Schedule the deliveries without a moment yet; returns how many got one."""
    unscheduled = and_(Delivery.edition_id == edition_id, Delivery.not_before.is_(None))
    subscription = and_(
        Subscription.subscriber_id == Subscriber.id,
        Subscription.newsletter_id == newsletter.id,
    )
    audience = (
        select(Subscriber.timezone, Subscription.send_hour)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .join(Subscription, subscription)
        .where(unscheduled)
        .distinct()
    )
    scheduled = 0
    for timezone, own_hour in session.execute(audience).all():
        hour = own_hour if own_hour is not None else newsletter.local_send_hour
        if hour is None:
            continue
        members = (
            select(Subscriber.id)
            .join(Subscription, subscription)
            .where(
                Subscriber.timezone == timezone,
                Subscription.send_hour.is_(None)
                if own_hour is None
                else Subscription.send_hour == own_hour,
            )
        )
        result = session.execute(
            update(Delivery)
            .where(unscheduled, Delivery.subscriber_id.in_(members))
            .values(not_before=next_local_hour(now, timezone, hour))
            .execution_options(synchronize_session=False)
        )
        scheduled += result.rowcount  # type: ignore[attr-defined]
    return scheduled
