"""Mail coming back: bounces and complaints suppress, soft bounces count, mailto
unsubscribes, and each report counts once, from the webhook, a maildir, or the handler."""

from __future__ import annotations

import mailbox
from datetime import timedelta
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import func, select

from digest.bounces import SOFT_BOUNCE_LIMIT
from digest.config import load_settings
from digest.db import session_factory
from digest.inbound import handle_inbound, read_mailbox
from digest.models import (
    Bounce,
    ConsentEvent,
    Delivery,
    DeliveryState,
    Edition,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from digest.sending import message_id
from digest.subscriptions import is_suppressed
from digest.verp import UNSUBSCRIBE, tagged_address, verp_address
from tests.support import prepare_sample_edition

BOUNCE_DOMAIN = "bounces.news.example.com"


def dsn(to: str, recipient: str, action: str, status: str, diagnostic: str) -> bytes:
    """A delivery status notification shaped as RFC 3464 and Postfix write them."""
    return f"""\
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B--
""".replace("\n", "\r\n").encode()


def arf(original_message_id: str, recipient: str) -> bytes:
    """A complaint (RFC 5965) quoting our message's headers, as Yahoo's feedback loop does."""
    return f"""\
From: feedback@arf.mail.yahoo.com
To: abuse@news.example.com
Subject: FW: Example News Daily
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an email abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 1

--B
Content-Type: text/rfc822-headers

Message-ID: {original_message_id}
To: {recipient}
Subject: Example News Daily

--B--
""".replace("\n", "\r\n").encode()


@pytest.fixture
def sent(env):
    env.update(DIGEST_BOUNCE_DOMAIN=BOUNCE_DOMAIN, DIGEST_API_TOKENS="inbound-token")
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 4)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.id)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .order_by(Delivery.id)
        ).all()
    return settings, sessions, edition, rows


def _status(sessions, email: str) -> SubscriberStatus:
    with sessions() as session:
        return session.scalar(select(Subscriber.status).where(Subscriber.email == email))


def test_hard_bounce_and_complaint_suppress_and_cancel_what_is_unsent(sent) -> None:
    settings, sessions, edition, rows = sent
    keys = settings.secret_keys
    (hard, hard_id), (complainer, complaint_id), (kept, _), _ = rows
    bounce = dsn(
        verp_address(keys, BOUNCE_DOMAIN, hard_id),
        hard,
        "failed",
        "5.1.1",
        "550 5.1.1 User unknown",
    )
    complaint = arf(message_id(settings, "news.example.com", edition.id, complaint_id), complainer)
    with sessions() as session:
        assert handle_inbound(session, keys, bounce) == {"hard": 1}
        assert handle_inbound(session, keys, bounce) == {"skipped": 1}  # handled again
        assert handle_inbound(session, keys, complaint) == {"complaint": 1}
        # The kept reader's mailbox forwards to an address that fails: theirs is fine.
        kept_id = rows[2][1]
        forwarded = dsn(
            verp_address(keys, BOUNCE_DOMAIN, kept_id),
            "old@elsewhere.example",
            "failed",
            "5.1.1",
            "550",
        )
        assert handle_inbound(session, keys, forwarded) == {"skipped": 1}
    assert _status(sessions, hard) == SubscriberStatus.SUPPRESSED
    assert _status(sessions, complainer) == SubscriberStatus.SUPPRESSED
    assert _status(sessions, kept) == SubscriberStatus.ACTIVE
    with sessions() as session:
        assert is_suppressed(session, hard) and is_suppressed(session, complainer)
        assert session.scalar(select(func.count()).select_from(Bounce)) == 2
        # The edition was still queued: nothing more goes to either address.
        states = dict(session.execute(select(Delivery.id, Delivery.state)).all())
        assert states[hard_id] == states[complaint_id] == DeliveryState.CANCELLED


def _more_deliveries(sessions, edition, subscriber_email: str, n: int) -> list[int]:
    """The subscriber's deliveries of ``n`` further editions (earlier days)."""
    with sessions() as session:
        subscriber_id = session.scalar(
            select(Subscriber.id).where(Subscriber.email == subscriber_email)
        )
        ids = []
        for days in range(1, n + 1):
            earlier = Edition(
                newsletter_id=edition.newsletter_id,
                issue_date=edition.issue_date - timedelta(days=days),
                subject="Earlier",
                content={"blocks": []},
            )
            session.add(earlier)
            session.flush()
            delivery = Delivery(
                edition_id=earlier.id, subscriber_id=subscriber_id, state=DeliveryState.SENT
            )
            session.add(delivery)
            session.flush()
            ids.append(delivery.id)
        session.commit()
    return ids


def test_soft_bounces_count_and_suppress_at_the_limit_and_delays_do_not(sent) -> None:
    settings, sessions, edition, rows = sent
    keys = settings.secret_keys
    email, delivery_id = rows[0]
    earlier = _more_deliveries(sessions, edition, email, SOFT_BOUNCE_LIMIT - 1)
    verp = verp_address(keys, BOUNCE_DOMAIN, delivery_id)
    with sessions() as session:
        delayed = dsn(verp, email, "delayed", "4.2.2", "452 4.2.2 Mailbox full")
        assert handle_inbound(session, keys, delayed) == {"ignored": 1}
        throttled = dsn(verp, email, "failed", "4.7.28", "421 4.7.28 unusual rate of mail")
        assert handle_inbound(session, keys, throttled) == {"ignored": 1}
        full = dsn(verp, email, "failed", "5.2.2", "552 5.2.2 Mailbox full")
        assert handle_inbound(session, keys, full) == {"soft": 1}
        # The same edition bouncing again (another report) is still one edition.
        again = dsn(verp, email, "failed", "5.2.2", "552 5.2.2 Mailbox is full")
        assert handle_inbound(session, keys, again) == {"soft": 1}
    assert _status(sessions, email) == SubscriberStatus.ACTIVE
    for n, other in enumerate(earlier, start=2):
        report = dsn(verp_address(keys, BOUNCE_DOMAIN, other), email, "failed", "5.2.2", "552")
        with sessions() as session:
            handle_inbound(session, keys, report)
        expected = (
            SubscriberStatus.SUPPRESSED if n == SOFT_BOUNCE_LIMIT else SubscriberStatus.ACTIVE
        )
        assert _status(sessions, email) == expected


def test_a_forged_or_foreign_report_changes_nothing(sent) -> None:
    settings, sessions, _, rows = sent
    email, delivery_id = rows[0]
    forged = verp_address(("someone-else",), BOUNCE_DOMAIN, delivery_id)
    with sessions() as session:
        outcome = handle_inbound(
            session, settings.secret_keys, dsn(forged, email, "failed", "5.1.1", "550 5.1.1 no")
        )
        assert outcome == {"unattributed": 1}
        assert handle_inbound(session, settings.secret_keys, b"\x00garbage\xff") == {"ignored": 1}
    assert _status(sessions, email) == SubscriberStatus.ACTIVE


def test_a_mailto_unsubscribe_ends_the_subscription(sent) -> None:
    settings, sessions, _, rows = sent
    email, delivery_id = rows[0]
    request = EmailMessage()
    request["From"] = email
    request["To"] = tagged_address(settings.secret_keys, UNSUBSCRIBE, BOUNCE_DOMAIN, delivery_id)
    request["Subject"] = "unsubscribe"
    with sessions() as session:
        assert handle_inbound(session, settings.secret_keys, request.as_bytes()) == {
            "unsubscribe": 1
        }
        subscription = session.scalars(
            select(Subscription).join(Subscriber).where(Subscriber.email == email)
        ).one()
        assert not subscription.active
        assert session.get_one(Delivery, delivery_id).state == DeliveryState.CANCELLED
        assert session.scalars(select(ConsentEvent.source)).all() == ["mailto"]


def test_the_webhook_and_a_maildir_handle_the_same_reports(sent, web_server, tmp_path) -> None:
    settings, sessions, _, rows = sent
    keys = settings.secret_keys
    (first, first_id), (second, second_id), *_ = rows
    base = web_server(settings)
    auth = {"Authorization": "Bearer inbound-token", "Content-Type": "message/rfc822"}
    bounce = dsn(verp_address(keys, BOUNCE_DOMAIN, first_id), first, "failed", "5.1.1", "550")
    assert httpx.post(f"{base}/api/inbound", content=bounce, headers=auth).json() == {"hard": 1}
    assert httpx.post(f"{base}/api/inbound", content=bounce, headers=auth).json() == {"skipped": 1}
    assert httpx.post(f"{base}/api/inbound", content=bounce).status_code == 401
    assert httpx.post(f"{base}/api/inbound", content=b"", headers=auth).status_code == 400

    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir.add(dsn(verp_address(keys, BOUNCE_DOMAIN, second_id), second, "failed", "5.1.1", "550"))
    maildir.add(b"Subject: hello\r\n\r\nnot a report\r\n")
    with sessions() as session:
        handled, outcome = read_mailbox(session, keys, f"maildir://{tmp_path / 'Maildir'}")
    assert outcome == {"hard": 1, "ignored": 1}
    assert handled == 2
    assert _status(sessions, first) == _status(sessions, second) == SubscriberStatus.SUPPRESSED
