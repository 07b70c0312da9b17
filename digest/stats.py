"""Edition statistics, derived on read from the delivery, open and click rows.

People are the headline: every "human" number counts only events classified as human when they
were recorded (see digest.tracking). Machine traffic (Apple Mail Privacy Protection prefetches,
security scanners, bots, and events recorded before classification existed) is reported beside
it, per kind, and never added in.

"Unique" means distinct deliveries, i.e. distinct recipients of this edition; "total" means every
recorded event. A click that carries no delivery (its delivery row was deleted) counts in totals
but cannot count as a unique reader.

Bounces and complaints count distinct deliveries with at least one such report, whether it
came back at SMTP time or later from the bounce mailbox (digest.bounces); throttling and delays
are not bounces and are never counted.

Every figure comes from a fixed handful of GROUP BY queries, whatever the size of the edition.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, case, distinct, func, select
from sqlalchemy.orm import Session

from digest.editions import load_edition
from digest.ledger import RECEIVED
from digest.models import (
    Bounce,
    BounceKind,
    Click,
    ClickKind,
    Delivery,
    DeliveryState,
    Edition,
    Link,
    Open,
    OpenKind,
    SegmentStory,
    SocialAccount,
    SocialPost,
    Story,
)

# The kind reported for events recorded before classification existed: not people, not proven
# machines, so shown on their own rather than guessed into either.
UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class Tally:
    """Events of one kind: distinct deliveries that had one, and all of them."""

    unique: int  # distinct deliveries with at least one such event
    total: int  # every recorded event


@dataclass(frozen=True)
class EditionStats:
    """An edition's headline numbers: people first, machines per kind beside them."""

    edition_id: int
    subject: str
    issue_date: date
    # Every delivery state, zeros included, keyed by DeliveryState value.
    deliveries: dict[str, int]
    recipients: int  # every delivery row, whatever its state
    delivered: int  # deliveries in state "sent"
    unique_human_opens: int
    # Keyed by OpenKind value plus "unclassified"; prefetches are machines, not readers.
    opens_by_kind: dict[str, Tally]
    unique_human_clicks: int
    total_human_clicks: int
    # Keyed by ClickKind value plus "unclassified".
    clicks_by_kind: dict[str, Tally]
    click_rate: float | None  # unique human clicks / delivered; None when nothing was sent
    # unique human clickers / unique human openers; None without human opens. It can exceed 1:
    # a reader whose mail client blocks images clicks without ever loading the pixel.
    click_to_open_rate: float | None
    unsubscribes: int  # deliveries whose recipient unsubscribed through this edition
    # Deliveries with a report of each kind, keyed by BounceKind value (hard, soft, complaint).
    bounces: dict[str, int]


@dataclass(frozen=True)
class ClickCounts:
    """Clicks on one story, link or section: readers (distinct deliveries), their clicks, and
    every scanner, bot and unclassified click."""

    unique_human: int
    total_human: int
    non_human: int


NO_CLICKS = ClickCounts(0, 0, 0)


@dataclass(frozen=True)
class StoryStats:
    story_id: int
    link_id: int
    title: str  # as sent (frozen in the edition), not as the story reads today
    section: str
    url: str
    clicks: ClickCounts


@dataclass(frozen=True)
class LinkStats:
    link_id: int
    story_id: int | None
    url: str
    clicks: ClickCounts


@dataclass(frozen=True)
class SectionStats:
    section: str
    stories: int
    # Distinct deliveries across the section's stories: a reader who clicked two of its
    # stories counts once, so these are not the sum of the story rows.
    clicks: ClickCounts


@dataclass(frozen=True)
class EditionReport:
    """The summary, then per story and link in sending order, then per section."""

    edition: EditionStats
    stories: list[StoryStats]
    links: list[LinkStats]
    sections: list[SectionStats]


@dataclass(frozen=True)
class _Item:
    """One story as the edition froze it."""

    story_id: int
    link_id: int
    title: str
    section: str


def _items(session: Session, edition: Edition) -> list[_Item]:
    """The edition's stories that reached someone, in the frozen order; a story shown twice
    counts once. The edition freezes more stories than any reader gets (the pool that
    personalisation draws from); those that no message carried are left out, and so are those
    of segments built for messages that never went out (refused, failed, cancelled: only
    deliveries the ledger counts as received count). Before anything went out, every story of
    the pool is listed."""
    # A semi-join: a segment's stories once, not once per message that carried them.
    went_out = select(Delivery.segment_id).where(
        Delivery.edition_id == edition.id, Delivery.state.in_(RECEIVED)
    )
    carried = set(
        session.scalars(
            select(SegmentStory.story_id).where(SegmentStory.segment_id.in_(went_out)).distinct()
        )
    )
    items: dict[int, _Item] = {}
    for block in edition.content.get("blocks", []):
        for item in block.get("items", []):
            if carried and item["story_id"] not in carried:
                continue
            items.setdefault(
                item["story_id"],
                _Item(item["story_id"], item["link_id"], item["title"], item.get("section", "")),
            )
    return list(items.values())


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _kind_key(kind: str | None) -> str:
    return UNCLASSIFIED if kind is None else str(kind)


def _tallies(session: Session, query: Select[Any]) -> dict[Any, dict[str, Tally]]:
    """Run a query whose rows are (group, kind, unique, total) into {group: {kind: Tally}}."""
    result: dict[Any, dict[str, Tally]] = {}
    for group, kind, unique, total in session.execute(query):
        result.setdefault(group, {})[_kind_key(kind)] = Tally(unique, total)
    return result


def _click_tallies(
    session: Session, edition_id: int, group: ColumnElement[Any]
) -> dict[Any, dict[str, Tally]]:
    query = (
        select(group, Click.kind, func.count(distinct(Click.delivery_id)), func.count())
        .join(Link, Link.id == Click.link_id)
        .where(Link.edition_id == edition_id)
        .group_by(group, Click.kind)
    )
    return _tallies(session, query)


def _every_kind(kinds: Iterable[StrEnum], counted: Mapping[str, Tally]) -> dict[str, Tally]:
    """All kinds in a stable order, zeros included, so a reader sees what was looked for."""
    return {key: counted.get(key, Tally(0, 0)) for key in [*map(str, kinds), UNCLASSIFIED]}


def _click_counts(by_kind: Mapping[str, Tally]) -> ClickCounts:
    human = by_kind.get(ClickKind.HUMAN, Tally(0, 0))
    machine = sum(t.total for kind, t in by_kind.items() if kind != ClickKind.HUMAN)
    return ClickCounts(human.unique, human.total, machine)


def _summary(session: Session, edition: Edition) -> EditionStats:
    deliveries = dict.fromkeys([s.value for s in DeliveryState], 0)
    unsubscribes = 0
    for state, count, unsubscribed in session.execute(
        select(Delivery.state, func.count(), func.count(Delivery.unsubscribed_at))
        .where(Delivery.edition_id == edition.id)
        .group_by(Delivery.state)
    ):
        deliveries[DeliveryState(state).value] = count
        unsubscribes += unsubscribed

    opens = _tallies(
        session,
        select(Delivery.edition_id, Open.kind, func.count(distinct(Open.delivery_id)), func.count())
        .join(Delivery, Delivery.id == Open.delivery_id)
        .where(Delivery.edition_id == edition.id)
        .group_by(Delivery.edition_id, Open.kind),
    ).get(edition.id, {})
    clicks = _click_tallies(session, edition.id, Link.edition_id).get(edition.id, {})
    bounces = dict.fromkeys([k.value for k in BounceKind], 0)
    for kind, count in session.execute(
        select(Bounce.kind, func.count(distinct(Bounce.delivery_id)))
        .join(Delivery, Delivery.id == Bounce.delivery_id)
        .where(Delivery.edition_id == edition.id)
        .group_by(Bounce.kind)
    ):
        bounces[BounceKind(kind).value] = count

    opens_by_kind = _every_kind(OpenKind, opens)
    clicks_by_kind = _every_kind(ClickKind, clicks)
    human_opens = opens_by_kind[OpenKind.HUMAN].unique
    human_clicks = clicks_by_kind[ClickKind.HUMAN]
    sent = deliveries[DeliveryState.SENT]
    return EditionStats(
        edition_id=edition.id,
        subject=edition.subject,
        issue_date=edition.issue_date,
        deliveries=deliveries,
        recipients=sum(deliveries.values()),
        delivered=sent,
        unique_human_opens=human_opens,
        opens_by_kind=opens_by_kind,
        unique_human_clicks=human_clicks.unique,
        total_human_clicks=human_clicks.total,
        clicks_by_kind=clicks_by_kind,
        click_rate=_rate(human_clicks.unique, sent),
        click_to_open_rate=_rate(human_clicks.unique, human_opens),
        unsubscribes=unsubscribes,
        bounces=bounces,
    )


def _link_clicks(session: Session, edition_id: int) -> dict[int, ClickCounts]:
    return {
        link_id: _click_counts(by_kind)
        for link_id, by_kind in _click_tallies(session, edition_id, Link.id).items()
    }


def _links(
    session: Session, edition: Edition, items: list[_Item], clicks: Mapping[int, ClickCounts]
) -> list[LinkStats]:
    position = {item.link_id: n for n, item in enumerate(items)}
    shown = {item.story_id for item in items}
    rows = [
        row
        for row in session.execute(
            select(Link.id, Link.story_id, Link.url).where(Link.edition_id == edition.id)
        )
        if row.story_id is None or row.story_id in shown
    ]
    # In the order the edition shows them; links outside the stories (if any) after, by id.
    rows.sort(key=lambda row: (position.get(row.id, len(position)), row.id))
    return [LinkStats(row.id, row.story_id, row.url, clicks.get(row.id, NO_CLICKS)) for row in rows]


def _stories(
    items: list[_Item], links: list[LinkStats], clicks: Mapping[int, ClickCounts]
) -> list[StoryStats]:
    # Each frozen story carries exactly one tracked link, so its counts are that link's.
    urls = {link.link_id: link.url for link in links}
    return [
        StoryStats(
            item.story_id,
            item.link_id,
            item.title,
            item.section,
            urls.get(item.link_id, ""),
            clicks.get(item.link_id, NO_CLICKS),
        )
        for item in items
    ]


def _sections(session: Session, edition: Edition, items: list[_Item]) -> list[SectionStats]:
    if not items:
        return []
    stories: dict[str, int] = {}
    for item in items:
        stories[item.section] = stories.get(item.section, 0) + 1
    # Grouped by the section each story was sent under (frozen in the edition), mapped from its
    # link in SQL so a reader counts once per section. Grouped by label, not by expression:
    # PostgreSQL cannot match the CASE's bind parameters in SELECT to those in GROUP BY.
    section = case({item.link_id: item.section for item in items}, value=Link.id, else_=None).label(
        "frozen_section"
    )
    query = (
        select(section, Click.kind, func.count(distinct(Click.delivery_id)), func.count())
        .join(Link, Link.id == Click.link_id)
        .where(Link.edition_id == edition.id)
        .group_by("frozen_section", Click.kind)
    )
    by_section = _tallies(session, query)
    return [
        SectionStats(name, count, _click_counts(by_section.get(name, {})))
        for name, count in stories.items()
    ]


def edition_stats(session: Session, edition_id: int) -> EditionStats:
    """The edition's headline numbers; raises EditionNotFound."""
    return _summary(session, load_edition(session, edition_id))


def link_stats(session: Session, edition_id: int) -> list[LinkStats]:
    edition = load_edition(session, edition_id)
    return _links(session, edition, _items(session, edition), _link_clicks(session, edition_id))


def story_stats(session: Session, edition_id: int) -> list[StoryStats]:
    """Per story, in the edition's frozen order."""
    edition = load_edition(session, edition_id)
    items = _items(session, edition)
    clicks = _link_clicks(session, edition_id)
    return _stories(items, _links(session, edition, items, clicks), clicks)


def section_stats(session: Session, edition_id: int) -> list[SectionStats]:
    """Per section, in order of first appearance in the edition."""
    edition = load_edition(session, edition_id)
    return _sections(session, edition, _items(session, edition))


def edition_report(session: Session, edition_id: int) -> EditionReport:
    """Everything at once, sharing the per-link query between stories and links."""
    edition = load_edition(session, edition_id)
    items = _items(session, edition)
    clicks = _link_clicks(session, edition_id)
    links = _links(session, edition, items, clicks)
    return EditionReport(
        edition=_summary(session, edition),
        stories=_stories(items, links, clicks),
        links=links,
        sections=_sections(session, edition, items),
    )


@dataclass(frozen=True)
class SocialPostStats:
    post_id: int
    account_id: int
    platform: str
    handle: str
    story_id: int
    title: str  # the story's headline today
    state: str
    posted_at: datetime | None
    human_clicks: int
    # Shared links have no delivery to tell readers apart: distinct truncated networks among
    # the human clicks are the honest approximation of "how many people".
    human_networks: int
    non_human_clicks: int


@dataclass(frozen=True)
class SocialAccountStats:
    account_id: int
    platform: str
    handle: str
    posts: int
    human_clicks: int
    non_human_clicks: int


@dataclass(frozen=True)
class SocialReport:
    posts: list[SocialPostStats]
    accounts: list[SocialAccountStats]


def social_report(session: Session) -> SocialReport:
    """Clicks on every social post's tracked link, per post and per account, in two queries."""
    human = Click.kind == ClickKind.HUMAN
    rows = session.execute(
        select(
            SocialPost.id.label("post_id"),
            SocialPost.account_id,
            Story.id.label("story_id"),
            Story.title,
            SocialPost.state,
            SocialPost.posted_at,
            func.count(case((human, Click.id))).label("human_clicks"),
            func.count(distinct(case((human, Click.ip_prefix)))).label("human_networks"),
            func.count(case((~human | Click.kind.is_(None), Click.id))).label("non_human_clicks"),
        )
        .join(Story, Story.id == SocialPost.story_id)
        .outerjoin(Link, Link.social_post_id == SocialPost.id)
        .outerjoin(Click, Click.link_id == Link.id)
        .group_by(SocialPost.id, Story.id, Story.title)
        .order_by(SocialPost.id)
    ).all()
    accounts = {a.id: a for a in session.scalars(select(SocialAccount).order_by(SocialAccount.id))}
    posts = [
        SocialPostStats(
            **{**row._asdict(), "state": str(row.state)},
            platform=accounts[row.account_id].platform,
            handle=accounts[row.account_id].handle,
        )
        for row in rows
    ]
    return SocialReport(
        posts=posts,
        accounts=[
            SocialAccountStats(
                account.id,
                account.platform,
                account.handle,
                posts=sum(1 for p in posts if p.account_id == account.id),
                human_clicks=sum(p.human_clicks for p in posts if p.account_id == account.id),
                non_human_clicks=sum(
                    p.non_human_clicks for p in posts if p.account_id == account.id
                ),
            )
            for account in accounts.values()
        ],
    )


CSV_COLUMNS = (
    "level",
    "story_id",
    "link_id",
    "section",
    "title",
    "url",
    "unique_human_clicks",
    "total_human_clicks",
    "non_human_clicks",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    # Titles come from other people's feeds; a spreadsheet would run "=HYPERLINK(…)" as a
    # formula. A leading apostrophe makes it text (OWASP's advice for CSV injection).
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_row(
    level: str,
    story_id: int | None,
    link_id: int,
    section: str,
    title: str,
    url: str,
    clicks: ClickCounts,
) -> list[str | int]:
    return [
        level,
        "" if story_id is None else story_id,
        link_id,
        _cell(section),
        _cell(title),
        _cell(url),
        clicks.unique_human,
        clicks.total_human,
        clicks.non_human,
    ]


def to_csv(report: EditionReport) -> str:
    """One row per story (level "story") then one per link (level "link"), in sending order."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for s in report.stories:
        writer.writerow(
            _csv_row("story", s.story_id, s.link_id, s.section, s.title, s.url, s.clicks)
        )
    stories = {story.link_id: story for story in report.stories}
    for link in report.links:
        story = stories.get(link.link_id)
        section, title = (story.section, story.title) if story else ("", "")
        writer.writerow(
            _csv_row("link", link.story_id, link.link_id, section, title, link.url, link.clicks)
        )
    return out.getvalue()
