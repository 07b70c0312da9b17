"""The reader's pages over real HTTP: double opt-in with the confirmation through a real SMTP
server, the preference centre, unsubscribe, the consent log and sign-up rate limits."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.models import (
    ConsentEvent,
    Frequency,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)
from digest.subscriptions import (
    CONFIRMATIONS_PER_ADDRESS_PER_DAY,
    address_hash,
    consent_version,
    request_subscription,
    subscribe_active,
    suppress,
)
from digest.tokens import TokenSigner
from tests.support import settled_count, wait_until

CONSENT = "I agree to receive Example News Daily by email."


@pytest.fixture
def site(env, smtp_sink, web_server):
    settings = load_settings(
        {**env, "DIGEST_SMTP_URL": f"smtp://{smtp_sink.host}:{smtp_sink.port}"}
    )
    migrate(settings.database_url)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        session.add(
            Newsletter(
                slug="daily",
                name="Example News Daily",
                sections=["World", "Business", "Sport"],
                consent_text=CONSENT,
            )
        )
        session.commit()
    return web_server(settings), sessions, settings


def _sign_up(base: str, email: str) -> httpx.Response:
    return httpx.post(f"{base}/subscribe/daily", data={"email": email, "name": "Ada"})


def _confirm_link(smtp_sink, address: str) -> str:
    # Sent after the answer (so its timing tells nothing): wait for it.
    wait_until(lambda: address in smtp_sink.by_recipient(), 10, "the confirmation message")
    [message] = smtp_sink.by_recipient()[address]
    parsed = message_from_bytes(message.data, policy=policy.default)
    body = parsed.get_body(("plain",)).get_content()
    return re.search(r"https?://\S+/confirm/\S+", body)[0]


def _subscription(sessions, email: str) -> Subscription | None:
    with sessions() as session:
        return session.scalars(
            select(Subscription).join(Subscriber).where(Subscriber.email == email)
        ).first()


def test_double_opt_in_then_preferences_then_unsubscribe(site, smtp_sink) -> None:
    base, sessions, settings = site
    assert "Subscribe to Example News Daily" in httpx.get(f"{base}/subscribe/daily").text

    answer = _sign_up(base, "Ada@Example.ORG")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    link = _confirm_link(smtp_sink, "ada@example.org").replace(settings.base_url, base)
    assert not _subscription(sessions, "ada@example.org").active

    # Opening the link (as a mail scanner would) only shows the button.
    assert "Confirm your subscription" in httpx.get(link).text
    assert not _subscription(sessions, "ada@example.org").active
    done = httpx.post(link)
    assert done.status_code == 200 and "You are subscribed" in done.text
    subscription = _subscription(sessions, "ada@example.org")
    assert subscription.active and subscription.confirmed_at is not None
    assert httpx.post(link).status_code == 200  # confirming twice changes nothing

    with sessions() as session:
        events = session.scalars(select(ConsentEvent).order_by(ConsentEvent.id)).all()
    assert [(e.action, e.source) for e in events] == [
        ("requested", "form"),
        ("confirmed", "confirmation link"),
    ]
    assert {e.address_hash for e in events} == {address_hash("ada@example.org")}
    assert {e.consent_version for e in events} == {consent_version(CONSENT)}
    assert {e.ip_prefix for e in events} == {"127.0.0.0/24"}

    preferences = base + re.search(r'href="(/p/[^"]+)"', done.text)[1]
    form = httpx.get(preferences).text
    assert 'value="World" checked' in form
    saved = httpx.post(
        preferences,
        data={
            "sections": ["World", "Sport"],
            "frequency": "weekly",
            "send_hour": "7",
            "timezone": "Europe/Berlin",
            "paused_until": "2030-01-31",
        },
    )
    assert saved.status_code == 200 and "Saved." in saved.text
    subscription = _subscription(sessions, "ada@example.org")
    assert subscription.sections == ["Sport", "World"]
    assert subscription.frequency == Frequency.WEEKLY
    assert subscription.send_hour == 7
    assert str(subscription.paused_until) == "2030-01-31"

    for bad in (
        {"timezone": "Mars/Olympus"},
        {"sections": ["Gardening"]},
        {"send_hour": "24"},
        {"paused_until": "tomorrow"},
    ):
        data = {"frequency": "daily", "timezone": "UTC", **bad}
        refused = httpx.post(preferences, data=data)
        assert refused.status_code == 400, bad
    unchanged = _subscription(sessions, "ada@example.org")
    assert (unchanged.frequency, unchanged.send_hour) == (Frequency.WEEKLY, 7)
    with sessions() as session:
        assert session.scalar(select(Subscriber.timezone)) == "Europe/Berlin"

    unsubscribe = base + re.search(r'href="(/u/[^"]+)"', saved.text)[1]
    assert httpx.post(unsubscribe).status_code == 200
    assert not _subscription(sessions, "ada@example.org").active
    with sessions() as session:
        actions = session.scalars(select(ConsentEvent.action).order_by(ConsentEvent.id)).all()
    assert actions == ["requested", "confirmed", "unsubscribed"]


def test_the_form_reveals_nothing_and_cannot_flood_an_inbox(site, smtp_sink) -> None:
    base, sessions, _ = site
    with sessions() as session:
        newsletter = session.scalars(select(Newsletter)).one()
        subscribe_active(session, newsletter, "member@example.org")
        suppress(session, "bounced@example.org", "hard bounce")
        session.commit()

    answers = [_sign_up(base, a) for a in ("member@example.org", "bounced@example.org")]
    answers += [_sign_up(base, "victim@example.org") for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1  # the same page whatever happened
    settled_count(
        lambda: len(smtp_sink.by_recipient().get("victim@example.org", [])),
        CONFIRMATIONS_PER_ADDRESS_PER_DAY,
        "confirmations to the victim",
    )
    received = smtp_sink.by_recipient()
    assert "member@example.org" not in received and "bounced@example.org" not in received

    invalid = _sign_up(base, "not an address")
    assert invalid.status_code == 400 and "not an address" in invalid.text
    assert httpx.get(f"{base}/subscribe/no-such-list").status_code == 404


def test_a_tampered_confirmation_link_confirms_nothing(site, smtp_sink) -> None:
    base, sessions, settings = site
    _sign_up(base, "ada@example.org")
    link = _confirm_link(smtp_sink, "ada@example.org").replace(settings.base_url, base)
    assert httpx.post(link[:-2] + ("AA" if not link.endswith("AA") else "BB")).status_code == 404
    # Signed for a subscription that is not pending anywhere.
    foreign = TokenSigner(settings.secret_keys).confirm_token(999, 1)
    assert httpx.post(f"{base}/confirm/{foreign}").status_code == 404
    assert not _subscription(sessions, "ada@example.org").active


def test_one_click_answers_200_for_a_signed_token_it_does_not_know(site) -> None:
    base, _, settings = site
    token = TokenSigner(settings.secret_keys).unsubscribe_token(424242, 1)
    response = httpx.post(
        f"{base}/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def test_the_consent_log_is_append_only(any_sessions) -> None:
    sessions = any_sessions
    with sessions() as session:
        newsletter = Newsletter(slug="daily", name="Daily")
        session.add(newsletter)
        session.flush()
        subscribe_active(session, newsletter, "ada@example.org")
        suppress(session, "ada@example.org", "complaint")
        session.commit()
        assert session.scalar(select(Subscriber.status)) == SubscriberStatus.SUPPRESSED
    for statement in ("UPDATE consent_events SET action = 'x'", "DELETE FROM consent_events"):
        with sessions() as session, pytest.raises(DatabaseError, match="append-only"):
            session.execute(text(statement))
    with sessions() as session:
        assert session.scalars(select(ConsentEvent.action)).all() == ["suppressed"]


def test_concurrent_sign_ups_keep_to_the_limit(any_sessions) -> None:
    sessions = any_sessions
    with sessions() as session:
        session.add(Newsletter(slug="daily", name="Daily"))
        session.commit()

    def sign_up(_: int) -> str:
        with sessions() as session:
            newsletter = session.scalars(select(Newsletter)).one()
            return request_subscription(
                session, newsletter, "victim@example.org", ip_prefix=None, now=utcnow()
            ).reason

    with ThreadPoolExecutor(max_workers=12) as pool:
        reasons = list(pool.map(sign_up, range(12)))
    assert reasons.count("confirmation sent") == CONFIRMATIONS_PER_ADDRESS_PER_DAY, reasons
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
