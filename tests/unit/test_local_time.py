"""Local-time delivery: each reader's moment from their zone and hour, buckets written with
the deliveries, and claims and dispatch that wait for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, update

from digest import sending
from digest.config import Settings
from digest.db import session_factory
from digest.edition_control import edition_status
from digest.editions import prepare_edition
from digest.local_time import next_local_hour
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    Link,
    Newsletter,
    Story,
    Subscriber,
    Subscription,
    utcnow,
)
from digest.selection import Limits, Reader, personalise, story_ids
from digest.sending import Dispatch, claim_batch, editions_to_dispatch
from tests.support import seed_sample_site

JUNE_1_0500_UTC = datetime(2026, 6, 1, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "hour", "expected"),
    [
        # 07:00 in Berlin (CEST) is under way: now.
        ("Europe/Berlin", 7, JUNE_1_0500_UTC),
        ("America/New_York", 7, datetime(2026, 6, 1, 11, 0, tzinfo=UTC)),
        # 14:00 in Tokyo: tomorrow's 07:00 there.
        ("Asia/Tokyo", 7, datetime(2026, 5, 31, 22, 0, tzinfo=UTC) + timedelta(days=1)),
        ("Asia/Kolkata", 7, datetime(2026, 6, 2, 1, 30, tzinfo=UTC)),
        # A zone that no longer exists counts as UTC rather than holding the message back.
        ("Mars/Olympus", 7, datetime(2026, 6, 1, 7, 0, tzinfo=UTC)),
    ],
)
def test_each_reader_gets_the_next_start_of_their_hour(zone, hour, expected) -> None:
    assert next_local_hour(JUNE_1_0500_UTC, zone, hour) == expected


def test_a_daylight_saving_change_on_the_way_is_applied() -> None:
    # Saturday noon in Berlin (CET, +1); clocks go forward that night: 07:00 is 05:00 UTC.
    saturday = datetime(2026, 3, 28, 11, 0, tzinfo=UTC)
    assert next_local_hour(saturday, "Europe/Berlin", 7) == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)


def test_buckets_are_frozen_with_the_edition_and_claims_wait_for_them(
    sqlite_settings: Settings,
) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    newsletter_id = seed_sample_site(sqlite_settings, 4)
    now = utcnow()
    later = (now.hour + 3) % 24
    with sessions() as session:
        newsletter = session.get_one(Newsletter, newsletter_id)
        newsletter.local_send_hour = later
        # 1 and 2: the newsletter's hour, in UTC and three hours east (under way there now);
        # 3: their own hour, now in UTC; 4: their own hour, later.
        zones = {1: "UTC", 2: "Etc/GMT-3", 3: "UTC", 4: "UTC"}  # GMT-3 is UTC+3
        own = {3: now.hour, 4: later}
        for subscriber_id, zone in zones.items():
            session.get_one(Subscriber, subscriber_id).timezone = zone
        for subscriber_id, hour in own.items():
            session.execute(
                update(Subscription)
                .where(Subscription.subscriber_id == subscriber_id)
                .values(send_hour=hour)
            )
        session.commit()
        edition = prepare_edition(session, newsletter, now.date(), now)
        moments = dict(session.execute(select(Delivery.subscriber_id, Delivery.not_before)).all())
        at_later = next_local_hour(now, "UTC", later)
        assert moments == {1: at_later, 2: now, 3: now, 4: at_later}

        # What may go now is dispatched at once; nothing more until the next bucket.
        assert editions_to_dispatch(session, now, 100)[edition.id].tasks == 1
        assert editions_to_dispatch(session, now + timedelta(seconds=1), 100) == {}
        status = edition_status(session, edition.id, now)
        assert (status.waiting, status.next_local_send_at) == (2, at_later)
        claimed = claim_batch(session, edition.id, 10, now)
        assert sorted(
            session.scalars(select(Delivery.subscriber_id).where(Delivery.id.in_(claimed)))
        ) == [2, 3]
        assert claim_batch(session, edition.id, 10, now + timedelta(minutes=1)) == []
        session.execute(
            update(Delivery).where(Delivery.id.in_(claimed)).values(state=DeliveryState.SENT)
        )
        session.commit()
        # When the hour comes, the beat dispatches the bucket afresh (one task per batch, as
        # for a new edition, not the few tasks of a stall) and a claim takes it.
        bucket = editions_to_dispatch(session, at_later, 100)[edition.id]
        assert bucket == Dispatch(tasks=1, continuing=False)
        assert editions_to_dispatch(session, at_later + timedelta(seconds=1), 100) == {}
        rest = claim_batch(session, edition.id, 10, at_later)
        assert sorted(
            session.scalars(select(Delivery.subscriber_id).where(Delivery.id.in_(rest)))
        ) == [1, 4]


def test_a_later_bucket_gets_the_news_as_of_its_own_hour(sqlite_settings: Settings) -> None:
    newsletter_id = seed_sample_site(sqlite_settings, 2)
    sessions = session_factory(sqlite_settings.database_url)
    now = utcnow()
    later = (now.hour + 2) % 24
    with sessions() as session:
        newsletter = session.get_one(Newsletter, newsletter_id)
        newsletter.local_send_hour = later
        session.get_one(Subscriber, 2).timezone = "Etc/GMT-2"  # UTC+2: their hour is now
        session.commit()
        edition = prepare_edition(session, newsletter, now.date(), now)
        at_later = next_local_hour(now, "UTC", later)
        session.add(
            Story(
                canonical_url="https://news.example.com/world/breaking",
                title="Breaking after the edition was prepared",
                section="World",
                published_at=at_later - timedelta(minutes=30),
            )
        )
        session.commit()
        # The first bucket goes as prepared; when the later one comes due, the pool catches up.
        editions_to_dispatch(session, now, 100)
        breaking = session.scalar(select(Story.id).where(Story.title.startswith("Breaking")))
        assert breaking not in _pool(session, edition.id)
        session.execute(update(Delivery).where(Delivery.subscriber_id == 2).values(state="sent"))
        session.commit()
        editions_to_dispatch(session, at_later, 100)
        assert breaking in _pool(session, edition.id)
        link = session.scalar(select(Link.id).where(Link.story_id == breaking))
        assert link is not None

        # Each reader's cut-off is their own moment: the later reader gets the new story, a
        # reader of the first bucket (a retry, say) would not.
        content = session.get_one(Edition, edition.id).content
        limits = Limits.of(newsletter)
        claimed = claim_batch(session, edition.id, 10, at_later)
        (later_reader,) = sending._recipients(
            session, session.get_one(Edition, edition.id), claimed
        )
        assert later_reader.reader.cutoff == at_later
        assert breaking in story_ids(personalise(content["blocks"], later_reader.reader, limits))
        early = Reader(cutoff=now)
        assert breaking not in story_ids(personalise(content["blocks"], early, limits))


def _pool(session, edition_id: int) -> set[int]:
    session.expire_all()
    content = session.get_one(Edition, edition_id).content
    return {item["story_id"] for block in content["blocks"] for item in block["items"]}


def test_a_reader_who_moves_zone_while_buckets_are_written_is_still_scheduled(
    sqlite_settings: Settings,
) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    newsletter_id = seed_sample_site(sqlite_settings, 3)
    now = utcnow()
    later = (now.hour + 3) % 24
    moved = False

    def move_reader_3(conn, cursor, statement, *_: object) -> None:
        # Between reading the buckets and writing the first one, reader 3 moves to a zone no
        # other reader is in.
        nonlocal moved
        if not moved and statement.startswith("UPDATE deliveries"):
            moved = True
            cursor.connection.execute(
                "UPDATE subscribers SET timezone = 'Pacific/Chatham' WHERE id = 3"
            )

    with sessions() as session:
        newsletter = session.get_one(Newsletter, newsletter_id)
        newsletter.local_send_hour = later
        session.commit()
        event.listen(session.get_bind(), "before_cursor_execute", move_reader_3)
        try:
            prepare_edition(session, newsletter, now.date(), now)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", move_reader_3)
        moments = dict(session.execute(select(Delivery.subscriber_id, Delivery.not_before)).all())
    assert moved
    assert moments[3] == next_local_hour(now, "Pacific/Chatham", later)
    assert moments[1] == moments[2] == next_local_hour(now, "UTC", later)
