"""Editions personalised through the sent-stories ledger, on SQLite and PostgreSQL: a story
reaches a reader once across editions and newsletters, each edition brings what is new since
the reader's last one, and a reader with a thin day gets nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.db import migrate, session_factory
from digest.editions import NothingToSend, prepare_edition
from digest.ledger import received_stories
from digest.models import (
    Delivery,
    DeliveryState,
    EditionSegment,
    Newsletter,
    Story,
    Subscription,
)
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
        **extra,
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
