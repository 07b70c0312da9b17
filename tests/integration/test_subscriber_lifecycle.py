"""Sunset (re-engage, then pause readers who stopped reading) and the GDPR rights (access,
erasure) against a real database and SMTP server."""

from __future__ import annotations

import json
import mailbox
import re
from datetime import date, timedelta
from email import message_from_bytes, policy

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from digest.cli import main
from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.models import (
    Bounce,
    BounceKind,
    Click,
    ClickKind,
    ConsentEvent,
    Delivery,
    DeliveryState,
    Edition,
    Link,
    Newsletter,
    Open,
    OpenKind,
    Subscriber,
    SubscriberStatus,
    Subscription,
    Suppression,
    utcnow,
)
from digest.privacy import erase_subscriber, personal_data
from digest.subscriptions import address_hash, subscribe_active, suppress
from digest.sunset import REENGAGEMENT_GRACE, run_sunset

READERS = ("clicker", "apple", "untracked", "silent")


@pytest.fixture
def history(env, smtp_sink):
    """Two sent editions to four readers: "clicker" clicked the latest, "apple" was only
    prefetched by Apple Mail, "untracked" has tracking off, "silent" did nothing."""
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_SUNSET_EDITIONS="2", DIGEST_API_TOKENS="t")
    settings = load_settings(env)
    migrate(settings.database_url)
    sessions = session_factory(settings.database_url)
    now = utcnow()
    with sessions() as session:
        newsletter = Newsletter(slug="daily", name="Example News Daily")
        session.add(newsletter)
        session.flush()
        for reader in READERS:
            subscriber = subscribe_active(session, newsletter, f"{reader}@example.org")
            subscriber.tracking_enabled = reader != "untracked"
        session.flush()
        ids = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
        for days_ago in (2, 1):
            edition = Edition(
                newsletter_id=newsletter.id,
                issue_date=date.today() - timedelta(days=days_ago),
                subject="Daily",
                content={"blocks": []},
            )
            session.add(edition)
            session.flush()
            link = Link(edition_id=edition.id, url="https://news.example.com/a")
            session.add(link)
            for reader in READERS:
                delivery = Delivery(
                    edition_id=edition.id,
                    subscriber_id=ids[f"{reader}@example.org"],
                    state=DeliveryState.SENT,
                    sent_at=now - timedelta(days=days_ago),
                )
                session.add(delivery)
                session.flush()
                if reader == "apple":
                    session.add(Open(delivery_id=delivery.id, kind=OpenKind.PREFETCH))
                if reader == "clicker" and days_ago == 1:
                    session.add(
                        Click(
                            link_id=link.id,
                            delivery_id=delivery.id,
                            kind=ClickKind.HUMAN,
                            ip_prefix="192.0.2.0/24",
                            user_agent="Mozilla/5.0 (Macintosh)",
                        )
                    )
        session.commit()
    return settings, sessions, smtp_sink


def _subscription(sessions, reader: str) -> Subscription:
    with sessions() as session:
        return session.scalars(
            select(Subscription).join(Subscriber).where(Subscriber.email == f"{reader}@example.org")
        ).one()


def test_silent_readers_are_asked_once_then_paused_and_saving_brings_them_back(history, web_server):
    settings, sessions, sink = history
    with sessions() as session:
        first = run_sunset(session, settings, utcnow())
        again = run_sunset(session, settings, utcnow())
    assert (first.reengaged, again.reengaged) == (2, 0)
    received = sink.by_recipient()
    assert sorted(received) == ["apple@example.org", "silent@example.org"]
    message = message_from_bytes(received["silent@example.org"][0].data, policy=policy.default)
    assert "still want" in message["Subject"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    keep = re.search(r"\S+/p/\S+", message.get_body(("plain",)).get_content())[0]

    # "apple" comes back with a human open of a later edition; "silent" does not.
    with sessions() as session:
        asked_at = utcnow() - REENGAGEMENT_GRACE - timedelta(hours=1)
        session.execute(
            update(Subscription)
            .where(Subscription.reengagement_sent_at.is_not(None))
            .values(reengagement_sent_at=asked_at)
        )
        apple_delivery = session.scalars(
            select(Delivery)
            .join(Subscriber)
            .where(Subscriber.email == "apple@example.org")
            .order_by(Delivery.id.desc())
        ).first()
        apple_delivery.sent_at = utcnow()
        session.add(Open(delivery_id=apple_delivery.id, kind=OpenKind.HUMAN))
        session.commit()
        settled = run_sunset(session, settings, utcnow())
    assert (settled.back, settled.paused) == (1, 1)
    assert _subscription(sessions, "silent").sunset_at is not None
    assert _subscription(sessions, "apple").sunset_at is None
    assert _subscription(sessions, "untracked").reengagement_sent_at is None
    assert _subscription(sessions, "clicker").reengagement_sent_at is None

    # The preference centre link in the message keeps them: saving lifts the sunset.
    base = web_server(settings)
    page = httpx.get(keep.replace(settings.base_url, base))
    assert "Still reading?" in page.text
    saved = httpx.post(
        keep.replace(settings.base_url, base), data={"frequency": "daily", "timezone": "UTC"}
    )
    assert saved.status_code == 200
    assert _subscription(sessions, "silent").sunset_at is None
    # Kept: the same silent editions are not held against them again.
    with sessions() as session:
        assert run_sunset(session, settings, utcnow()).reengaged == 0


def test_access_and_erasure_keep_the_counts_and_the_suppression(history, web_server):
    settings, sessions, _ = history
    base = web_server(settings)
    auth = {"Authorization": "Bearer t"}
    exported = httpx.get(f"{base}/api/subscribers/Clicker@Example.org/data", headers=auth)
    assert exported.status_code == 200
    data = exported.json()
    assert data["subscriber"]["email"] == "clicker@example.org"
    assert len(data["deliveries"]) == 2 and len(data["clicks"]) == 1
    assert data["clicks"][0]["ip_prefix"] == "192.0.2.0/24"
    assert (
        httpx.get(f"{base}/api/subscribers/nobody@example.org/data", headers=auth).status_code
        == 404
    )
    assert httpx.get(f"{base}/api/subscribers/not-an-address/data", headers=auth).status_code == 400

    with sessions() as session:
        clicker = session.scalar(
            select(Subscriber.id).where(Subscriber.email == "clicker@example.org")
        )
        detail = "552 <clicker@example.org> mailbox full"
        session.add(
            Bounce(report_key="k", subscriber_id=clicker, kind=BounceKind.SOFT, detail=detail)
        )
        session.execute(
            update(Delivery).where(Delivery.subscriber_id == clicker).values(last_error=detail)
        )
        suppress(session, "clicker@example.org", "hard bounce", detail)
        session.commit()
    assert httpx.delete(f"{base}/api/subscribers/clicker@example.org", headers=auth).json() == {
        "status": "erased"
    }
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 8  # counts stay
        click = session.scalars(select(Click)).one()
        assert (click.ip_prefix, click.user_agent, click.kind) == (None, None, ClickKind.HUMAN)
        held = session.execute(select(Subscriber.email, Subscriber.name)).all()
        held += session.execute(select(Bounce.detail)).all()
        held += session.execute(select(Delivery.last_error)).all()
        held += session.execute(select(Suppression.detail)).all()
        assert "clicker" not in str(held)
        # Suppressed before for its hard bounce: the suppression stays, its detail does not.
        assert session.get(Suppression, address_hash("clicker@example.org")).reason == "hard bounce"
        actions = session.scalars(select(ConsentEvent.action).order_by(ConsentEvent.id)).all()
        assert actions[-2:] == ["suppressed", "erased"]
        # Only the hash-keyed consent log remains for the address.
        assert set(personal_data(session, "clicker@example.org")) == {"consent_log"}
        assert not erase_subscriber(session, "clicker@example.org")
        assert (
            session.scalar(select(Subscriber.status).where(Subscriber.id == clicker))
            == SubscriberStatus.ERASED
        )


def test_the_cli_reads_the_mailbox_exports_erases_and_runs_the_sunset(history, env, tmp_path):
    *_, sink = history
    runner = CliRunner()
    empty = tmp_path / "Maildir"
    mailbox.Maildir(empty, create=True).add(b"Subject: hello\r\n\r\nnot a report\r\n")
    read = runner.invoke(main, ["inbound", "--mailbox", f"maildir://{empty}"], env=env)
    assert read.exit_code == 0 and "1 messages handled: 1 ignored" in read.output, read.output
    missing = runner.invoke(main, ["inbound", "--mailbox", f"maildir://{tmp_path}/none"], env=env)
    assert missing.exit_code == 1 and "Error:" in missing.output

    data = runner.invoke(main, ["subscribers", "data", "silent@example.org"], env=env)
    assert data.exit_code == 0 and json.loads(data.output)["subscriber"]["status"] == "active"
    erased = runner.invoke(main, ["subscribers", "erase", "silent@example.org", "--yes"], env=env)
    assert erased.exit_code == 0, erased.output
    again = runner.invoke(main, ["subscribers", "erase", "silent@example.org", "--yes"], env=env)
    assert again.exit_code == 1 and "no subscriber" in again.output

    sunset = runner.invoke(main, ["subscribers", "sunset"], env=env)
    assert sunset.exit_code == 0 and "1 asked whether they still read" in sunset.output
    assert sorted(sink.by_recipient()) == ["apple@example.org"]  # the erased reader is not asked
