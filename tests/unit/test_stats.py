"""Edition statistics on SQLite: every number, people apart from machines, no division by zero."""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.db import engine_for, session_factory
from digest.editions import EditionNotFound
from digest.ledger import segment
from digest.models import (
    Click,
    ClickKind,
    Delivery,
    DeliveryState,
    Open,
    OpenKind,
    SegmentStory,
    Subscription,
    utcnow,
)
from digest.stats import (
    CSV_COLUMNS,
    NO_CLICKS,
    ClickCounts,
    Tally,
    edition_report,
    edition_stats,
    link_stats,
    section_stats,
    story_stats,
    to_csv,
)
from tests.support import prepare_sample_edition, send_until_done

# The state each delivery is put in after sending, by position: four sent, one of each other.
STATES = [DeliveryState.SENT] * 4 + [
    DeliveryState.QUEUED,
    DeliveryState.SENDING,
    DeliveryState.DEFERRED,
    DeliveryState.FAILED,
    DeliveryState.UNKNOWN,
    DeliveryState.CANCELLED,
]


@pytest.fixture
def sessions(sqlite_settings: Settings) -> sessionmaker[Session]:
    return session_factory(sqlite_settings.database_url)


def _deliveries(session: Session, edition_id: int) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery).where(Delivery.edition_id == edition_id).order_by(Delivery.id)
        )
    )


def _sent_edition(settings: Settings, subscribers: int) -> int:
    edition = prepare_sample_edition(settings, subscribers)
    send_until_done(settings, edition.id)
    return edition.id


def _add(session: Session, *events: Click | Open) -> None:
    session.add_all(events)
    session.commit()


def _click(link_id: int, delivery: Delivery | None, kind: ClickKind | None) -> Click:
    return Click(link_id=link_id, delivery_id=delivery.id if delivery else None, kind=kind)


def _open(delivery: Delivery, kind: OpenKind | None) -> Open:
    return Open(delivery_id=delivery.id, kind=kind)


@pytest.fixture
def busy(sqlite_settings: Settings, sessions: sessionmaker[Session]):
    """A sent edition with deliveries in every state and opens and clicks of every kind.

    Stories ``a`` and ``b`` share a section, ``c`` is in another one.
    """
    edition_id = _sent_edition(sqlite_settings, len(STATES))
    with sessions() as session:
        d = _deliveries(session, edition_id)
        assert all(x.state == DeliveryState.SENT for x in d)
        for delivery, state in zip(d, STATES, strict=True):
            delivery.state = state
        d[1].unsubscribed_at = utcnow()
        d[9].unsubscribed_at = utcnow()  # cancelled because the reader left: still counted
        session.commit()

        stories = story_stats(session, edition_id)
        by_section: dict[str, list[int]] = {}
        for n, story in enumerate(stories):
            by_section.setdefault(story.section, []).append(n)
        a, b = next(ns for ns in by_section.values() if len(ns) >= 2)[:2]
        c = next(n for n, s in enumerate(stories) if s.section != stories[a].section)
        la, lb, lc = (stories[n].link_id for n in (a, b, c))

        _add(
            session,
            # d0 reads twice and its Apple Mail prefetched once; d1 is only prefetched;
            # d2 reads; d3 reads and is probed by a scanner and a bot; d8 predates kinds.
            _open(d[0], OpenKind.HUMAN),
            _open(d[0], OpenKind.HUMAN),
            _open(d[0], OpenKind.PREFETCH),
            *[_open(d[1], OpenKind.PREFETCH) for _ in range(3)],
            _open(d[2], OpenKind.HUMAN),
            _open(d[3], OpenKind.HUMAN),
            _open(d[3], OpenKind.SCANNER),
            _open(d[3], OpenKind.BOT),
            _open(d[8], None),
            # d0 clicks a twice and b once (same section); d1 clicks a without a human open.
            _click(la, d[0], ClickKind.HUMAN),
            _click(la, d[0], ClickKind.HUMAN),
            _click(lb, d[0], ClickKind.HUMAN),
            _click(la, d[1], ClickKind.HUMAN),
            # A person without a delivery (the row was deleted): in totals, never unique.
            _click(lc, None, ClickKind.HUMAN),
            # Machines: a gateway opens every link, a bot one, and one predates kinds.
            _click(la, d[2], ClickKind.SCANNER),
            _click(lb, d[2], ClickKind.SCANNER),
            _click(lc, d[2], ClickKind.SCANNER),
            _click(la, d[0], ClickKind.SCANNER),
            _click(la, d[3], ClickKind.BOT),
            _click(lb, d[3], None),
        )
    return edition_id, (a, b, c)


def test_edition_summary_counts_people_apart_from_machines(busy, sessions) -> None:
    edition_id, _ = busy
    with sessions() as session:
        stats = edition_stats(session, edition_id)
    assert stats.deliveries == {
        "queued": 1,
        "sending": 1,
        "sent": 4,
        "deferred": 1,
        "failed": 1,
        "unknown": 1,
        "cancelled": 1,
    }
    assert (stats.recipients, stats.delivered, stats.unsubscribes) == (10, 4, 2)

    assert stats.unique_human_opens == 3  # d0, d2, d3; d1 was only prefetched
    assert stats.opens_by_kind == {
        "human": Tally(unique=3, total=4),
        "prefetch": Tally(unique=2, total=4),
        "scanner": Tally(unique=1, total=1),
        "bot": Tally(unique=1, total=1),
        "unclassified": Tally(unique=1, total=1),
    }

    assert (stats.unique_human_clicks, stats.total_human_clicks) == (2, 5)  # d0 and d1
    assert stats.clicks_by_kind == {
        "human": Tally(unique=2, total=5),
        "scanner": Tally(unique=2, total=4),
        "bot": Tally(unique=1, total=1),
        "unclassified": Tally(unique=1, total=1),
    }
    assert stats.click_rate == pytest.approx(2 / 4)
    assert stats.click_to_open_rate == pytest.approx(2 / 3)


def test_story_link_and_section_rows(busy, sessions) -> None:
    edition_id, (a, b, c) = busy
    with sessions() as session:
        report = edition_report(session, edition_id)
        # The one-at-a-time functions agree with the report.
        assert story_stats(session, edition_id) == report.stories
        assert link_stats(session, edition_id) == report.links
        assert section_stats(session, edition_id) == report.sections
        assert edition_stats(session, edition_id) == report.edition

    stories = report.stories
    assert stories[a].clicks == ClickCounts(unique_human=2, total_human=3, non_human=3)
    assert stories[b].clicks == ClickCounts(unique_human=1, total_human=1, non_human=2)
    assert stories[c].clicks == ClickCounts(unique_human=0, total_human=1, non_human=1)
    untouched = [s.clicks for n, s in enumerate(stories) if n not in (a, b, c)]
    assert untouched and all(counts == NO_CLICKS for counts in untouched)
    assert sum(s.clicks.total_human for s in stories) == report.edition.total_human_clicks

    # Links in the same order as the stories, one per story, with the same counts.
    assert [link.link_id for link in report.links] == [s.link_id for s in stories]
    assert [link.clicks for link in report.links] == [s.clicks for s in stories]
    assert all(
        link.url == s.url and "utm_source=newsletter" in link.url
        for link, s in zip(report.links, stories, strict=True)
    )

    sections = {row.section: row for row in report.sections}
    assert [row.section for row in report.sections] == list(
        dict.fromkeys(s.section for s in stories)
    )
    for name, row in sections.items():
        assert row.stories == sum(1 for s in stories if s.section == name)
    # d0 clicked two stories of a's section: one reader there, not the stories' 2 + 1.
    assert sections[stories[a].section].clicks == ClickCounts(2, 4, 5)
    assert sections[stories[c].section].clicks.unique_human == 0
    assert sections[stories[c].section].clicks.total_human == 1


def test_a_prepared_but_unsent_edition_has_no_rates(sqlite_settings, sessions) -> None:
    edition = prepare_sample_edition(sqlite_settings, 3)
    with sessions() as session:
        report = edition_report(session, edition.id)
    stats = report.edition
    assert (stats.recipients, stats.delivered, stats.deliveries["queued"]) == (3, 0, 3)
    assert stats.click_rate is None and stats.click_to_open_rate is None
    assert stats.unique_human_opens == stats.unique_human_clicks == stats.unsubscribes == 0
    assert all(
        t == Tally(0, 0) for t in [*stats.opens_by_kind.values(), *stats.clicks_by_kind.values()]
    )
    assert report.stories and all(s.clicks == NO_CLICKS for s in report.stories)
    assert report.sections and all(s.clicks == NO_CLICKS for s in report.sections)


def test_clicks_without_human_opens_have_a_click_rate_but_no_click_to_open(
    sqlite_settings, sessions
) -> None:
    edition_id = _sent_edition(sqlite_settings, 4)
    with sessions() as session:
        d = _deliveries(session, edition_id)
        link_id = story_stats(session, edition_id)[0].link_id
        # Images blocked: the reader clicks without the pixel ever loading, except via Apple.
        _add(session, _open(d[0], OpenKind.PREFETCH), _click(link_id, d[0], ClickKind.HUMAN))
        stats = edition_stats(session, edition_id)
    assert stats.click_rate == pytest.approx(1 / 4)
    assert stats.unique_human_opens == 0 and stats.click_to_open_rate is None


def test_machine_clicks_alone_make_a_zero_click_rate(sqlite_settings, sessions) -> None:
    edition_id = _sent_edition(sqlite_settings, 3)
    with sessions() as session:
        d = _deliveries(session, edition_id)
        links = [s.link_id for s in story_stats(session, edition_id)]
        # A security gateway that follows every link of every message.
        _add(session, *[_click(link, x, ClickKind.SCANNER) for link in links for x in d])
        _add(session, _click(links[0], d[0], ClickKind.BOT), _click(links[0], d[1], None))
        report = edition_report(session, edition_id)
    stats = report.edition
    assert (stats.unique_human_clicks, stats.total_human_clicks) == (0, 0)
    assert stats.click_rate == 0.0  # something was sent: zero, not "no data"
    assert stats.clicks_by_kind["scanner"] == Tally(unique=3, total=3 * len(links))
    assert report.stories[0].clicks == ClickCounts(0, 0, 5)
    assert all(s.clicks == ClickCounts(0, 0, 3) for s in report.stories[1:])


def test_stories_of_segments_that_never_went_out_are_not_counted(sqlite_settings, sessions):
    edition = prepare_sample_edition(sqlite_settings, 3)
    with sessions() as session:
        chooser, *others = _deliveries(session, edition.id)
        session.scalars(
            select(Subscription).where(Subscription.subscriber_id == chooser.subscriber_id)
        ).one().sections = ["Asia"]
        session.commit()
    send_until_done(sqlite_settings, edition.id)
    with sessions() as session:
        chooser, *others = _deliveries(session, edition.id)
        # The other two messages were refused after their segment was recorded.
        for delivery in others:
            delivery.state = DeliveryState.FAILED
        carried = set(
            session.scalars(
                select(SegmentStory.story_id).where(SegmentStory.segment_id == chooser.segment_id)
            )
        )
        pool = [i["story_id"] for b in edition.content["blocks"] for i in b["items"]]
        # And one segment was built for a message cancelled before it was handed over.
        never = next(story_id for story_id in pool if story_id not in carried)
        segment(session, edition.id, f"latest:{never}", [never])
        session.commit()
        report = edition_report(session, edition.id)
    assert [s.story_id for s in report.stories] == [s for s in dict.fromkeys(pool) if s in carried]
    assert {link.story_id for link in report.links} == carried
    assert sum(row.stories for row in report.sections) == len(carried)


def test_unknown_edition(sqlite_settings, sessions) -> None:
    with sessions() as session:
        for query in (edition_stats, story_stats, link_stats, section_stats, edition_report):
            with pytest.raises(EditionNotFound, match="no edition 999"):
                query(session, 999)


def test_a_fixed_number_of_queries_whatever_the_edition_size(busy, sqlite_settings, sessions):
    edition_id, _ = busy
    statements: list[str] = []
    engine = engine_for(sqlite_settings.database_url)

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with sessions() as session:
            report = edition_report(session, edition_id)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(report.stories) > 10
    # The edition, the stories sent, deliveries, opens, clicks by kind, bounces, by link, the
    # links, by section.
    assert len(statements) == 9


def test_csv_has_story_rows_then_link_rows(busy, sessions) -> None:
    edition_id, (a, _, _) = busy
    with sessions() as session:
        report = edition_report(session, edition_id)
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    n = len(report.stories)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["level"] for r in rows] == ["story"] * n + ["link"] * len(report.links)
    story_row, link_row = rows[a], rows[n + a]
    story = report.stories[a]
    for row in (story_row, link_row):
        assert row["story_id"] == str(story.story_id) and row["link_id"] == str(story.link_id)
        assert (row["title"], row["section"], row["url"]) == (story.title, story.section, story.url)
        assert (row["unique_human_clicks"], row["total_human_clicks"]) == ("2", "3")
        assert row["non_human_clicks"] == "3"


@pytest.mark.parametrize("title", ['=HYPERLINK("http://evil")', "+1", "-2", "@SUM(A1)"])
def test_csv_cells_never_start_a_spreadsheet_formula(busy, sessions, title) -> None:
    edition_id, _ = busy
    with sessions() as session:
        report = edition_report(session, edition_id)
    report = replace(report, stories=[replace(report.stories[0], title=title)])
    row = next(csv.DictReader(io.StringIO(to_csv(report))))
    assert row["title"] == "'" + title
