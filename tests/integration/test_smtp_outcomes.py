"""What each SMTP answer does to a delivery, against a real SMTP server."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from digest import sending
from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.models import (
    Bounce,
    BounceKind,
    Delivery,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from digest.subscriptions import is_suppressed
from digest.verp import UNSUBSCRIBE, delivery_of, tagged_delivery
from tests.support import (
    deliveries_by_email,
    parse_message,
    prepare_sample_edition,
    send_until_done,
)


def test_4xx_defers_5xx_fails_and_a_drop_after_the_dot_is_unknown(env, smtp_sink) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    settings: Settings = load_settings(env)
    sessions = session_factory(settings.database_url)
    smtp_sink.replies["reader002@example.org"] = "451 4.7.1 Try again later"
    smtp_sink.replies["reader003@example.org"] = "550 5.1.1 No such user"
    smtp_sink.drop_after_data.add("reader004@example.org")
    edition = prepare_sample_edition(settings, 5)
    send_until_done(settings, edition.id)

    rows = deliveries_by_email(sessions, edition.id)
    assert rows["reader001@example.org"].state == DeliveryState.SENT
    assert rows["reader005@example.org"].state == DeliveryState.SENT  # the batch went on
    deferred = rows["reader002@example.org"]
    assert deferred.state == DeliveryState.DEFERRED
    assert "451" in deferred.last_error and deferred.next_attempt_at > utcnow()
    failed = rows["reader003@example.org"]
    assert failed.state == DeliveryState.FAILED and "550" in failed.last_error
    # The server had the whole message when the connection dropped: never resend it.
    assert rows["reader004@example.org"].state == DeliveryState.UNKNOWN
    assert "reader004@example.org" in smtp_sink.by_recipient()

    # The deferred one goes out when its retry is due and the server accepts again.
    smtp_sink.replies.clear()
    with sessions() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == deferred.id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        assert sending.reconcile(session, utcnow()) == {edition.id: 1}
    send_until_done(settings, edition.id)
    rows = deliveries_by_email(sessions, edition.id)
    assert rows["reader002@example.org"].state == DeliveryState.SENT
    assert rows["reader002@example.org"].attempts == 2  # the deferral, then the delivery
    received = smtp_sink.by_recipient()
    assert {email: len(m) for email, m in received.items()} == {
        "reader001@example.org": 1,
        "reader002@example.org": 1,
        "reader004@example.org": 1,
        "reader005@example.org": 1,
    }


def test_each_delivery_has_its_own_signed_return_path(env, smtp_sink) -> None:
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_BOUNCE_DOMAIN="Bounces.News.Example.com")
    settings = load_settings(env)
    sessions = session_factory(settings.database_url)
    edition = prepare_sample_edition(settings, 3)
    send_until_done(settings, edition.id)
    rows = deliveries_by_email(sessions, edition.id)
    for rcpt, messages in smtp_sink.by_recipient().items():
        (message,) = messages
        assert message.mail_from.endswith("@bounces.news.example.com")
        assert delivery_of(settings.secret_keys, message.mail_from) == rows[rcpt].id
        # The mailto unsubscribe names the delivery too, at the same routed domain.
        header = parse_message(message.data)["List-Unsubscribe"]
        mailto = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", header)[1]
        assert tagged_delivery(settings.secret_keys, UNSUBSCRIBE, mailto) == rows[rcpt].id


def test_without_a_bounce_domain_bounces_go_to_the_sender(env, smtp_sink) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 2)
    send_until_done(settings, edition.id)
    assert {m.mail_from for m in smtp_sink.messages} == {"digest@news.example.com"}
    # Nothing reads unsubscribe mail here: no mailto is offered, only the https one-click.
    for message in smtp_sink.messages:
        assert "mailto:" not in str(parse_message(message.data)["List-Unsubscribe"])


def test_a_bad_mailbox_is_suppressed_at_once_and_a_policy_block_is_not(env, smtp_sink) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    settings: Settings = load_settings(env)
    sessions = session_factory(settings.database_url)
    smtp_sink.replies["reader001@example.org"] = "550 5.1.1 No such user"
    smtp_sink.replies["reader002@example.org"] = "552 5.2.2 Mailbox full"
    smtp_sink.replies["reader003@example.org"] = "554 5.7.1 Message rejected as spam"
    edition = prepare_sample_edition(settings, 3)
    send_until_done(settings, edition.id)

    with sessions() as session:
        statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
        bounces = session.scalars(select(Bounce.kind)).all()
        failed = session.scalars(select(Delivery.state)).all()
    assert failed == [DeliveryState.FAILED] * 3
    assert statuses == {
        "reader001@example.org": SubscriberStatus.SUPPRESSED,
        "reader002@example.org": SubscriberStatus.ACTIVE,  # counted, not suppressed
        # A block of our sending is no bounce of the reader's: not even counted.
        "reader003@example.org": SubscriberStatus.ACTIVE,
    }
    assert sorted(bounces) == [BounceKind.HARD, BounceKind.SOFT]
    with sessions() as session:
        assert is_suppressed(session, "reader001@example.org")
        assert not is_suppressed(session, "reader002@example.org")
