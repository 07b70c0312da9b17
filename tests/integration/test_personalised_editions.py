"""Editions personalised through the sent-stories ledger, on SQLite and PostgreSQL: a story
reaches a reader once across editions and newsletters, each edition brings what is new since
the reader's last one, and a reader with a thin day gets nothing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from digest import sending
from digest.config import Settings, load_settings
from digest.db import migrate, session_factory
from digest.editions import NothingToSend, prepare_edition
from digest.ledger import KEY_LENGTH, received_stories, segment, segment_blocks
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    EditionSegment,
    Frequency,
    Newsletter,
    Story,
    Subscriber,
    Subscription,
)
from digest.selection import DIGESTED, Limits, Reader, personalise, segment_key, story_ids
from digest.subscriptions import subscribe_active
from tests.support import parse_message, send_until_done

DAY1 = datetime(2026, 11, 24, 6, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, env: dict[str, str]) -> Settings:
    if request.param == "postgresql":
        env["DIGEST_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    loaded = load_settings(env)
    migrate(loaded.database_url)
    return loaded


def _story(session, n: int, section: str, published: datetime, **extra) -> Story:
    story = Story(
        canonical_url=f"https://news.example.com/{section.lower()}/{n}",
        title=f"{section} story {n}",
        section=section,
        published_at=published,
        # Seen as it was published (a feed on time), unless ``first_seen_at`` says otherwise.
        **{"first_seen_at": published, **extra},
    )
    session.add(story)
    return story


def _titles_by_reader(settings: Settings, edition_id: int) -> dict[str, list[str]]:
    """The story titles each reader's message showed, from the outbox."""
    shown: dict[str, list[str]] = {}
    for path in (settings.data_dir / "outbox").glob("*.eml"):
        message = parse_message(path.read_bytes())
        if f"{edition_id}:" not in message["Feedback-ID"]:
            continue
        text = message.get_body(("plain",)).get_content()
        shown[message["To"]] = [
            line.removeprefix("[World] ") for line in text.splitlines() if " story " in line
        ]
    return shown


def test_each_story_reaches_a_reader_once_and_thin_days_are_skipped(settings: Settings) -> None:
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        daily = Newsletter(
            slug="daily",
            name="Daily",
            must_read_limit=1,
            latest_limit=3,
            section_quota=2,
            popular_limit=0,
            min_items=2,
        )
        session.add(daily)
        session.flush()
        everything = subscribe_active(session, daily, "all@example.org")
        sporty = subscribe_active(session, daily, "sport@example.org")
        session.flush()
        session.scalars(
            select(Subscription).where(Subscription.subscriber_id == sporty.id)
        ).one().sections = ["Sport"]
        pinned = _story(
            session, 0, "World", DAY1 - timedelta(hours=20), pinned_until=DAY2 + timedelta(days=3)
        )
        for n in range(1, 5):
            _story(session, n, "World", DAY1 - timedelta(hours=n))
        for n in range(5, 8):
            _story(session, n, "Sport", DAY1 - timedelta(hours=n))
        session.commit()
        first = prepare_edition(session, daily, DAY1.date(), DAY1)
    send_until_done(settings, first.id)

    day1 = _titles_by_reader(settings, first.id)
    # Must-Read first, then Latest: at most two World, and the newest Sport.
    assert day1["all@example.org"] == [
        "World story 0",
        "World story 1",
        "World story 2",
        "Sport story 5",
    ]
    # The Must-Read is for everyone; of the latest, only Sport.
    assert day1["sport@example.org"] == ["World story 0", "Sport story 5", "Sport story 6"]

    with sessions() as session:
        _story(session, 8, "World", DAY2 - timedelta(hours=2))
        _story(session, 9, "World", DAY2 - timedelta(hours=1))
        session.commit()
        second = prepare_edition(session, session.get_one(Newsletter, daily.id), DAY2.date(), DAY2)
        received = received_stories(session, [everything.id], [pinned.id])
    assert received == {everything.id: {pinned.id}}  # the ledger has yesterday's pin
    # Regular readers received the pin yesterday: what is new to them leads the subject.
    assert second.subject == "Daily: World story 9"
    send_until_done(settings, second.id)

    day2 = _titles_by_reader(settings, second.id)
    # The pin is still in force but was received; only what was published since day 1 is new.
    assert day2 == {"all@example.org": ["World story 9", "World story 8"]}
    with sessions() as session:
        states = dict(
            session.execute(
                select(Delivery.subscriber_id, Delivery.state).where(
                    Delivery.edition_id == second.id
                )
            ).all()
        )
        reason = session.scalar(
            select(Delivery.last_error).where(
                Delivery.edition_id == second.id, Delivery.subscriber_id == sporty.id
            )
        )
        segments = session.scalars(
            select(EditionSegment.key).where(EditionSegment.edition_id == first.id)
        ).all()
    # Nothing new in Sport and the pin already received: a thin day for this reader.
    assert states == {everything.id: DeliveryState.SENT, sporty.id: DeliveryState.CANCELLED}
    assert reason is not None and "thin day" in reason
    assert len(segments) == 2  # one per kind of reader, not one per message

    with sessions() as session, pytest.raises(NothingToSend, match="thin day"):
        # Nothing published since the second edition: no third one.
        prepare_edition(
            session,
            session.get_one(Newsletter, daily.id),
            (DAY2 + timedelta(days=1)).date(),
            DAY2 + timedelta(hours=1),
        )


def _newsletter(session, slug: str, **options) -> Newsletter:
    newsletter = Newsletter(
        slug=slug, name=slug.title(), must_read_limit=0, popular_limit=0, **options
    )
    session.add(newsletter)
    session.flush()
    return newsletter


def test_a_late_story_reaches_readers_whose_last_edition_came_before_it(
    settings: Settings,
) -> None:
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        daily = _newsletter(session, "daily", latest_limit=3, section_quota=3)
        subscribe_active(session, daily, "reader@example.org")
        _story(session, 1, "World", DAY1 - timedelta(hours=2))
        _story(session, 2, "World", DAY1 - timedelta(hours=1))
        session.commit()
        first = prepare_edition(session, daily, DAY1.date(), DAY1)
    send_until_done(settings, first.id)
    assert _titles_by_reader(settings, first.id) == {
        "reader@example.org": ["World story 2", "World story 1"]
    }

    with sessions() as session:
        # Its feed was late: it says it was published before the first edition, but we first
        # saw it after that edition went out.
        _story(
            session,
            3,
            "World",
            DAY1 - timedelta(hours=3),
            first_seen_at=DAY1 + timedelta(hours=2),
        )
        _story(session, 4, "World", DAY2 - timedelta(hours=1))
        session.commit()
        second = prepare_edition(session, session.get_one(Newsletter, daily.id), DAY2.date(), DAY2)
    send_until_done(settings, second.id)
    assert _titles_by_reader(settings, second.id) == {
        "reader@example.org": ["World story 4", "World story 3"]
    }


def test_weekly_readers_are_judged_by_their_week_and_unsent_editions_do_not_count(
    settings: Settings,
) -> None:
    week = timedelta(days=7)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        newsletter = _newsletter(
            session,
            "mixed",
            latest_limit=5,
            section_quota=5,
            min_items=2,
            weekly_day=DAY1.weekday(),
        )
        subscribe_active(session, newsletter, "daily@example.org")
        weekly = subscribe_active(session, newsletter, "weekly@example.org")
        session.flush()
        session.scalars(
            select(Subscription).where(Subscription.subscriber_id == weekly.id)
        ).one().frequency = Frequency.WEEKLY
        for n in (1, 2):
            _story(session, n, "World", DAY1 - timedelta(hours=n))
        session.commit()
        first = prepare_edition(session, newsletter, DAY1.date(), DAY1)
    send_until_done(settings, first.id)
    assert set(_titles_by_reader(settings, first.id)) == {"daily@example.org", "weekly@example.org"}

    def prepare(at: datetime, *, hold: bool = False) -> Edition:
        with sessions() as session:
            return prepare_edition(
                session, session.get_one(Newsletter, newsletter.id), at.date(), at, hold=hold
            )

    week_of_news = ["World story 5", "World story 4", "World story 3"]
    with sessions() as session:
        _story(session, 3, "World", DAY1 + timedelta(days=2))
        _story(session, 4, "World", DAY1 + timedelta(days=2, hours=1))
        session.commit()
    # Held for review and never released: nobody received it.
    prepare(DAY1 + timedelta(days=3), hold=True)
    with sessions() as session:
        _story(session, 5, "World", DAY1 + timedelta(days=5))
        session.commit()
    # For daily readers all three are new since the last edition that reached them.
    daily = prepare(DAY1 + timedelta(days=6))
    send_until_done(settings, daily.id)
    assert _titles_by_reader(settings, daily.id) == {"daily@example.org": week_of_news}

    # Nothing is new to daily readers, but a week of news is to weekly ones: not a thin day.
    weekly_edition = prepare(DAY1 + week)
    assert weekly_edition.subject == "Mixed: World story 5"
    send_until_done(settings, weekly_edition.id)
    assert _titles_by_reader(settings, weekly_edition.id) == {"weekly@example.org": week_of_news}


def test_a_segment_key_too_long_for_its_column_is_stored_as_its_digest(
    settings: Settings,
) -> None:
    stories = 600
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        big = _newsletter(session, "big", latest_limit=stories, section_quota=stories)
        reader = subscribe_active(session, big, "reader@example.org")
        for n in range(stories):
            _story(session, n, "World", DAY1 - timedelta(minutes=n + 1))
        session.commit()
        edition = prepare_edition(session, big, DAY1.date(), DAY1)
        expected = personalise(edition.content["blocks"], Reader(), Limits.of(big))
    assert len(segment_key(expected)) > KEY_LENGTH
    send_until_done(settings, edition.id)

    with sessions() as session:
        delivery = session.scalars(
            select(Delivery).where(Delivery.subscriber_id == reader.id)
        ).one()
        assert delivery.state == DeliveryState.SENT
        stored = session.get_one(EditionSegment, delivery.segment_id)
        assert stored.key.startswith(DIGESTED) and len(stored.key) <= KEY_LENGTH
        # What "view in browser" shows is what the message carried.
        assert segment_blocks(session, edition.content["blocks"], stored.id) == expected
        # The same long key finds the same segment.
        assert segment(session, edition.id, segment_key(expected), story_ids(expected)) == stored.id


def test_a_segment_the_database_refuses_fails_only_its_delivery(settings: Settings) -> None:
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        daily = _newsletter(session, "daily", latest_limit=3, section_quota=3)
        # The World reader's message goes first; on PostgreSQL its outcome is still
        # uncommitted when the Sport reader's segment is refused.
        for email, section in (("world@example.org", "World"), ("sport@example.org", "Sport")):
            subscriber = subscribe_active(session, daily, email)
            session.flush()
            session.scalars(
                select(Subscription).where(Subscription.subscriber_id == subscriber.id)
            ).one().sections = [section]
        _story(session, 1, "World", DAY1 - timedelta(hours=1))
        taken_down = _story(session, 2, "Sport", DAY1 - timedelta(hours=2))
        session.commit()
        edition = prepare_edition(session, daily, DAY1.date(), DAY1)
        # Taken down after the edition was frozen: the segment's story row cannot point at it.
        session.delete(taken_down)
        session.commit()
    send_until_done(settings, edition.id)

    with sessions() as session:
        outcomes = {
            email: (state, error)
            for email, state, error in session.execute(
                select(Subscriber.email, Delivery.state, Delivery.last_error)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.edition_id == edition.id)
            )
        }
    assert outcomes["world@example.org"] == (DeliveryState.SENT, None)
    state, error = outcomes["sport@example.org"]
    assert state == DeliveryState.FAILED and "no segment" in error
    assert _titles_by_reader(settings, edition.id) == {"world@example.org": ["World story 1"]}


def test_two_newsletters_at_once_never_give_a_reader_one_story_twice(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        morning = _newsletter(session, "morning", latest_limit=2)
        alerts = _newsletter(session, "alerts", latest_limit=2)
        subscribe_active(session, morning, "both@example.org")
        subscribe_active(session, alerts, "both@example.org")
        for n in range(1, 5):
            _story(session, n, "World", DAY1 - timedelta(hours=n))
        session.commit()
        first = prepare_edition(session, morning, DAY1.date(), DAY1)
        second = prepare_edition(session, alerts, DAY1.date(), DAY1)
    send_until_done(settings, first.id)
    # The second newsletter's batch read the ledger before the first one's message went out
    # (two workers at once): its reader looks as if nothing had been received.
    real_readers = sending.readers
    monkeypatch.setattr(
        sending,
        "readers",
        lambda *args, **kwargs: {
            sid: dataclasses.replace(reader, received=frozenset())
            for sid, reader in real_readers(*args, **kwargs).items()
        },
    )
    send_until_done(settings, second.id)
    shown = {**_titles_by_reader(settings, first.id)}
    later = _titles_by_reader(settings, second.id)
    assert shown["both@example.org"] == ["World story 1", "World story 2"]
    # Chosen again when its message entered the window: the next stories, not the same ones.
    assert later["both@example.org"] == ["World story 3", "World story 4"]
