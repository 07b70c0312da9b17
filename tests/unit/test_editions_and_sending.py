"""Preparing and sending an edition on SQLite with the file outbox, without a broker."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from digest import sending
from digest.config import Settings
from digest.db import session_factory
from digest.editions import NothingToSend, prepare_edition
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    Link,
    Newsletter,
    SourceRole,
    Story,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)
from digest.sample_site import LISTS
from tests.support import parse_message, prepare_sample_edition, seed_sample_site, send_until_done

SUBSCRIBERS = 20


@pytest.fixture
def sessions(sqlite_settings: Settings):
    return session_factory(sqlite_settings.database_url)


@pytest.fixture
def edition(sqlite_settings: Settings) -> Edition:
    return prepare_sample_edition(sqlite_settings, SUBSCRIBERS)


def _states(sessions, edition_id: int) -> dict[DeliveryState, int]:
    with sessions() as session:
        return sending.delivery_counts(session, edition_id)


def test_edition_freezes_must_reads_first_then_latest(edition: Edition, sessions) -> None:
    blocks = edition.content["blocks"]
    assert [b["key"] for b in blocks] == ["must_reads", "latest", "popular"]
    must_read_titles = [i["title"] for i in blocks[0]["items"]]
    assert must_read_titles == [s.title for s in LISTS[SourceRole.MUST_READ]]
    latest = [i["title"] for i in blocks[1]["items"]]
    assert latest[0] == LISTS[SourceRole.LATEST][0].title  # the newest story leads
    assert not set(latest) & set(must_read_titles)
    assert edition.subject.endswith(must_read_titles[0])
    with sessions() as session:
        links = {link.id: link for link in session.scalars(select(Link))}
        stories = {story.id: story for story in session.scalars(select(Story))}
    for item in (i for b in blocks for i in b["items"]):
        link = links[item["link_id"]]
        assert link.story_id == item["story_id"]
        assert link.url.startswith(stories[item["story_id"]].canonical_url + "?")
        assert "utm_medium=email" in link.url


def test_one_delivery_per_active_subscriber_and_prepare_is_idempotent(
    sqlite_settings: Settings, sessions
) -> None:
    newsletter_id = seed_sample_site(sqlite_settings, SUBSCRIBERS)
    with sessions() as session:
        session.execute(
            update(Subscription).where(Subscription.subscriber_id == 1).values(active=False)
        )
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == 2)
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
        session.commit()
        newsletter = session.get_one(Newsletter, newsletter_id)
        now = utcnow()
        first = prepare_edition(session, newsletter, now.date(), now)
        again = prepare_edition(session, newsletter, now.date(), now)
        assert again.id == first.id
        recipients = session.scalars(
            select(Delivery.subscriber_id).where(Delivery.edition_id == first.id)
        ).all()
    assert sorted(recipients) == list(range(3, SUBSCRIBERS + 1))


def test_nothing_to_send_writes_nothing(sessions, sqlite_settings: Settings) -> None:
    with sessions() as session:
        newsletter = Newsletter(slug="empty", name="Empty")
        session.add(newsletter)
        session.commit()
        with pytest.raises(NothingToSend):
            prepare_edition(session, newsletter, utcnow().date(), utcnow())
        assert session.scalar(select(func.count()).select_from(Edition)) == 0


def test_claims_never_overlap(edition: Edition, sessions) -> None:
    with sessions() as session:
        first = sending.claim_batch(session, edition.id, 7, utcnow())
        second = sending.claim_batch(session, edition.id, 7, utcnow())
        rest = sending.claim_batch(session, edition.id, 100, utcnow())
    assert len(first) == len(second) == 7
    assert len(rest) == SUBSCRIBERS - 14
    assert not set(first) & set(second) and not set(rest) & (set(first) | set(second))


def test_batches_send_every_delivery_once_to_the_outbox(
    edition: Edition, sessions, sqlite_settings: Settings
) -> None:
    send_until_done(sqlite_settings, edition.id)
    assert _states(sessions, edition.id)[DeliveryState.SENT] == SUBSCRIBERS
    files = sorted((sqlite_settings.data_dir / "outbox").glob("*.eml"))
    assert len(files) == SUBSCRIBERS
    messages = [parse_message(f.read_bytes()) for f in files]
    assert len({m["Message-ID"] for m in messages}) == SUBSCRIBERS
    assert {m["Feedback-ID"] for m in messages} == {f"{edition.id}:daily:digest:news.example.com"}


def test_the_next_message_is_built_while_the_relay_decides_on_this_one(
    edition: Edition, sessions, sqlite_settings: Settings, monkeypatch
) -> None:
    events: list[tuple[str, int]] = []
    real_message, real_sent = sending.EditionMailer.message, sending._Records.sent

    def message(self, recipient, now):
        events.append(("built", recipient.delivery_id))
        return real_message(self, recipient, now)

    def sent(self, delivery_id):
        events.append(("sent", delivery_id))
        return real_sent(self, delivery_id)

    monkeypatch.setattr(sending.EditionMailer, "message", message)
    monkeypatch.setattr(sending._Records, "sent", sent)
    sending.send_batch(sessions, sqlite_settings, edition.id)
    ids = sorted(delivery_id for kind, delivery_id in events if kind == "sent")
    assert len(ids) == min(sqlite_settings.batch_size, SUBSCRIBERS) > 2
    # Each message but the first is built before the one ahead of it is recorded as taken,
    # that is, while the relay (here the outbox) answers for it; each is built once.
    expected = [("built", ids[0])]
    for current, following in itertools.pairwise(ids):
        expected += [("built", following), ("sent", current)]
    assert events == [*expected, ("sent", ids[-1])]


def test_a_batch_that_breaks_gives_back_what_it_never_handed_over(
    edition: Edition, sessions, sqlite_settings: Settings, monkeypatch
) -> None:
    calls = 0
    real = sending.EditionMailer.message

    def failing_third(self, recipient, now):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("template blew up")
        return real(self, recipient, now)

    monkeypatch.setattr(sending.EditionMailer, "message", failing_third)
    with pytest.raises(RuntimeError):
        sending.send_batch(sessions, sqlite_settings, edition.id)
    states = _states(sessions, edition.id)
    assert states[DeliveryState.SENT] == 2
    assert states[DeliveryState.SENDING] == 0
    assert states[DeliveryState.QUEUED] == SUBSCRIBERS - 2


def test_reconcile_settles_expired_leases_and_due_retries(edition: Edition, sessions) -> None:
    now = utcnow()
    an_hour_ago = now - timedelta(hours=1)
    with sessions() as session:
        in_window, deferred_id, *untried = sending.claim_batch(session, edition.id, 7, an_hour_ago)
        session.execute(
            update(Delivery)
            .where(Delivery.id == in_window)
            .values(state=DeliveryState.SENDING, lease_until=an_hour_ago)
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == deferred_id)
            .values(state=DeliveryState.DEFERRED, next_attempt_at=now - timedelta(seconds=1))
        )
        session.execute(update(Edition).values(dispatched_at=now))
        session.commit()

        assert sending.reconcile(session, now) == {edition.id: 1}
        assert session.get_one(Delivery, in_window).state == DeliveryState.UNKNOWN
        assert session.get_one(Delivery, deferred_id).state == DeliveryState.QUEUED
        # Claimed but never tried by a worker that died: claimable again, not unknown.
        assert {session.get_one(Delivery, i).state for i in untried} == {DeliveryState.QUEUED}
        assert set(untried) <= set(sending.claim_batch(session, edition.id, 100, now))


def test_dispatch_once_then_only_when_stalled(edition: Edition, sessions) -> None:
    now = utcnow()
    with sessions() as session:
        first = sending.editions_to_dispatch(session, now, batch_size=7)
        assert first == {edition.id: sending.Dispatch(tasks=3, continuing=False)}
        assert sending.editions_to_dispatch(session, now, batch_size=7) == {}
        # Nobody claimed anything for longer than STALL: the messages were lost. A few
        # self-continuing tasks take the edition up again.
        later = now + sending.STALL + timedelta(seconds=1)
        assert sending.editions_to_dispatch(session, later, batch_size=7) == {
            edition.id: sending.Dispatch(tasks=3, continuing=True)
        }
        sending.claim_batch(session, edition.id, 7, later)
        muchlater = later + sending.STALL + timedelta(seconds=1)
        session.execute(update(Edition).values(dispatched_at=later))
        session.commit()
        # A claim within STALL means a worker is on it: no dispatch.
        assert sending.editions_to_dispatch(session, later + timedelta(seconds=1), 7) == {}
        assert edition.id in sending.editions_to_dispatch(session, muchlater, 7)


def test_a_reader_who_left_after_the_audience_was_frozen_is_not_mailed(
    sqlite_settings: Settings, sessions
) -> None:
    # The audience INSERT ... SELECT reads a snapshot: an unsubscribe committed meanwhile
    # cancels nothing. The send checks again.
    edition = prepare_sample_edition(sqlite_settings, 3)
    with sessions() as session:
        session.execute(
            update(Subscription).where(Subscription.subscriber_id == 1).values(active=False)
        )
        session.execute(
            update(Subscriber).where(Subscriber.id == 2).values(status=SubscriberStatus.SUPPRESSED)
        )
        session.commit()
    outcomes = sending.send_batch(sessions, sqlite_settings, edition.id)
    with sessions() as session:
        states = dict(session.execute(select(Delivery.subscriber_id, Delivery.state)).all())
    assert dict(outcomes) == {DeliveryState.SENT: 1}
    assert states == {
        1: DeliveryState.CANCELLED,
        2: DeliveryState.CANCELLED,
        3: DeliveryState.SENT,
    }
