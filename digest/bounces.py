"""What a bounce or a complaint does to a subscriber.

- hard bounce (the mailbox does not exist): suppressed at once;
- complaint (the reader pressed "spam"): suppressed at once;
- soft bounce (mailbox full, a content block, retries given up): recorded, and suppressed once
  SOFT_BOUNCE_LIMIT editions bounced softly within SOFT_BOUNCE_WINDOW;
- throttling and delays are not bounces and never reach this module.

Only reports that name one of our deliveries through an HMAC (the VERP return path, the
Message-ID, the mailto address) are acted on: an unsigned report naming an address would let
anyone who can send mail to the bounce mailbox suppress any reader.

Each report is recorded once (``Bounce.report_key``): a mailbox message handled twice after
a crash, or a webhook retried, counts once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.db import upsert_insert
from digest.models import Bounce, BounceKind, Delivery, Subscriber
from digest.subscriptions import suppress

log = logging.getLogger(__name__)

SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_WINDOW = timedelta(days=30)


def record_bounce(
    session: Session,
    delivery_id: int,
    kind: BounceKind,
    *,
    key: str,
    recipient: str | None = None,
    status: str = "",
    detail: str = "",
    now: datetime,
) -> bool:
    """Record the report and suppress where the rules say; False when this report was
    recorded before (nothing changes), names no delivery we have, or is about another address
    than the one we sent to. The caller commits."""
    row = session.execute(
        select(Subscriber.id, Subscriber.email)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.id == delivery_id)
    ).first()
    if row is None:
        return False
    subscriber_id, email = row
    if recipient is not None and recipient.lower() != email:
        # Our envelopes have one recipient: another address failing means the mailbox
        # forwards (an alias, a list), and the subscriber's own address is fine.
        log.info("delivery %s: a report about %s, a forwarding target", delivery_id, recipient)
        return False
    inserted = session.execute(
        upsert_insert(session, Bounce)
        .values(
            report_key=key,
            delivery_id=delivery_id,
            subscriber_id=subscriber_id,
            kind=kind,
            status=status[:30],
            detail=detail[:500],
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["report_key"])
    ).rowcount
    if not inserted:
        return False
    if kind in (BounceKind.HARD, BounceKind.COMPLAINT):
        reason = "hard bounce" if kind == BounceKind.HARD else "complaint"
        log.info("delivery %s: %s, subscriber %s suppressed", delivery_id, reason, subscriber_id)
        suppress(session, email, reason, f"{status} {detail}".strip())
        return True
    softly_bounced = session.scalar(
        select(func.count(func.distinct(Bounce.delivery_id))).where(
            Bounce.subscriber_id == subscriber_id,
            Bounce.kind == BounceKind.SOFT,
            Bounce.received_at > now - SOFT_BOUNCE_WINDOW,
        )
    )
    if softly_bounced >= SOFT_BOUNCE_LIMIT:
        log.info("subscriber %s suppressed after %d soft bounces", subscriber_id, softly_bounced)
        suppress(session, email, "soft bounces", f"{softly_bounced} soft bounces; last: {status}")
    return True
