"""Mail that comes back to us: bounces, complaint reports and mailto unsubscribe requests,
whether read from a mailbox (digest.mailboxes) or posted to the webhook.

Handling one message is idempotent (bounces are keyed by the message's hash, unsubscribing
twice changes nothing), so a mailbox message handled again after a crash does no harm.
"""

from __future__ import annotations

import email
import hashlib
import logging
from collections import Counter
from email.policy import compat32
from email.utils import getaddresses

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.bounce_reports import ReportKind, read_reports
from digest.bounces import record_bounce
from digest.mailboxes import process_mailbox
from digest.models import BounceKind, Delivery, Edition, utcnow
from digest.subscriptions import unsubscribe
from digest.verp import UNSUBSCRIBE, tagged_delivery

log = logging.getLogger(__name__)

_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc")


def _unsubscribe_delivery(raw: bytes, keys: tuple[str, ...]) -> int | None:
    try:
        message = email.message_from_bytes(raw, policy=compat32)
        values = [str(v) for name in _RECIPIENT_HEADERS for v in message.get_all(name, [])]
    except Exception:  # anyone can write to this mailbox: unreadable is not ours
        return None
    for _, address in getaddresses(values):
        delivery_id = tagged_delivery(keys, UNSUBSCRIBE, address)
        if delivery_id is not None:
            return delivery_id
    return None


def handle_inbound(session: Session, keys: tuple[str, ...], raw: bytes) -> Counter[str]:
    """Act on one message; returns what it was, for the caller's log (e.g. {"hard": 1}).
    Commits."""
    unsubscribing = _unsubscribe_delivery(raw, keys)
    if unsubscribing is not None:
        row = session.execute(
            select(Delivery.subscriber_id, Edition.newsletter_id)
            .join(Edition, Edition.id == Delivery.edition_id)
            .where(Delivery.id == unsubscribing)
        ).first()
        if row is not None:
            unsubscribe(session, row[0], row[1], unsubscribing, source="mailto")
        return Counter(unsubscribe=1)
    outcome: Counter[str] = Counter()
    digest_of_message = hashlib.sha256(raw).hexdigest()[:56]
    now = utcnow()
    for n, report in enumerate(read_reports(raw, keys)):
        if report.kind == ReportKind.IGNORED:
            outcome["ignored"] += 1
            continue
        if report.delivery_id is None:
            # Unsigned: acting on it would let anyone suppress any address (digest.bounces).
            log.info("a %s report names none of our deliveries: %s", report.kind, report.detail)
            outcome["unattributed"] += 1
            continue
        recorded = record_bounce(
            session,
            report.delivery_id,
            BounceKind(report.kind.value),
            key=f"{digest_of_message}:{n}",
            recipient=report.recipient,
            status=report.status,
            detail=report.detail,
            now=now,
        )
        # Not recorded: seen before, or about a forwarding target (digest.bounces).
        outcome[report.kind.value if recorded else "skipped"] += 1
    session.commit()
    return outcome


def read_mailbox(session: Session, keys: tuple[str, ...], url: str) -> tuple[int, Counter[str]]:
    """Handle every message waiting in the mailbox at ``url`` (digest.mailboxes); returns how
    many were handled and what they were. A message whose handling fails stays for the next
    run. Raises MailboxError when the mailbox cannot be read."""
    outcome: Counter[str] = Counter()

    def handle(raw: bytes) -> None:
        try:
            outcome.update(handle_inbound(session, keys, raw))
        except Exception:
            session.rollback()  # the session stays usable for the next message
            raise

    return process_mailbox(url, handle), outcome
