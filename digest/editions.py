"""Preparing an edition: choose, freeze, and write one delivery row per subscriber.

Everything an edition shows is frozen into ``Edition.content`` here, together with the tracked
link rows, in the same transaction as the deliveries. After this commit the edition never
changes: a retried send or a "view in browser" renders the same thing.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, insert, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.editor_templates import (
    EditorTemplateError,
    render_editor_template,
    template_context,
)
from digest.ledger import regular_reader
from digest.local_time import schedule_local_sends
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    Frequency,
    Link,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from digest.selection import (
    BLOCK_ORDER,
    LATEST,
    POOL_WINDOW,
    Block,
    Limits,
    personalise,
    select_pool,
)
from digest.tracking import with_utm

log = logging.getLogger(__name__)


class NothingToSend(Exception):
    """Too few stories qualify for the edition (a thin day); nothing was written."""


class EditionNotFound(LookupError):
    """There is no edition with this id."""


def load_edition(session: Session, edition_id: int) -> Edition:
    edition = session.get(Edition, edition_id)
    if edition is None:
        raise EditionNotFound(f"there is no edition {edition_id}")
    return edition


def _find(session: Session, newsletter_id: int, issue_date: date) -> Edition | None:
    return session.scalars(
        select(Edition).where(
            Edition.newsletter_id == newsletter_id, Edition.issue_date == issue_date
        )
    ).first()


# The pause reason of an edition prepared for review: ``digest editions send`` releases it.
HELD = "held for review until sent"


def prepare_edition(
    session: Session, newsletter: Newsletter, issue_date: date, now: datetime, *, hold: bool = False
) -> Edition:
    """Freeze the newsletter's edition for ``issue_date`` with stories published up to ``now``;
    with ``hold``, it is paused as HELD in the same transaction, so no tick can send it first.

    Idempotent: if the edition exists (prepared earlier, or concurrently by another tick), that
    edition is returned as it is and nothing is written.
    """
    existing = _find(session, newsletter.id, issue_date)
    if existing is not None:
        return existing
    pool = select_pool(session, newsletter, now)
    blocks = _frozen(pool)
    shown = _regular_edition(session, newsletter, issue_date, blocks)
    context = template_context(newsletter.name, issue_date, newsletter.locale, shown)
    subject = f"{newsletter.name}: {shown[0]['title']}"
    if newsletter.subject_template.strip():
        subject = " ".join(
            render_editor_template("subject", newsletter.subject_template, context).split()
        )
    intro = ""
    if newsletter.intro_template.strip():
        intro = render_editor_template("intro", newsletter.intro_template, context)
    edition = Edition(
        newsletter_id=newsletter.id,
        issue_date=issue_date,
        subject=subject[:500],
        preheader=" · ".join(item["title"] for item in shown[1:4])[:500],
        intro=intro,
        content={},
        prepared_at=now,
        paused_at=now if hold else None,
        pause_reason=HELD if hold else None,
    )
    # A concurrent tick may insert the same (newsletter, day) first: on PostgreSQL this flush
    # then waits for its commit and fails on the unique index. The savepoint keeps the session
    # usable so the winner's edition can be returned.
    try:
        with session.begin_nested():
            session.add(edition)
            session.flush()
    except IntegrityError:
        session.rollback()
        raced = _find(session, newsletter.id, issue_date)
        if raced is None:
            raise
        return raced

    _link(session, edition, pool, blocks)
    edition.content = {"blocks": blocks, "cutoff": now.isoformat()}

    # The audience, frozen in one statement.
    audience = (
        select(
            literal(edition.id),
            Subscriber.id,
            literal(DeliveryState.QUEUED.value),
            literal(0),
            literal(now, type_=Delivery.__table__.c.created_at.type),
        )
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(*_takes(newsletter, issue_date))
    )
    session.execute(
        insert(Delivery).from_select(
            ["edition_id", "subscriber_id", "state", "attempts", "created_at"], audience
        )
    )
    schedule_local_sends(session, edition.id, newsletter, now)
    session.commit()
    return edition


def _takes(newsletter: Newsletter, issue_date: date) -> list[ColumnElement[bool]]:
    """Who takes the newsletter's edition of ``issue_date`` (subscriptions joined to their
    subscribers): every active subscriber who takes this day's edition (daily, or weekly on
    the newsletter's weekday), is not on a pause of their own and was not paused by a sunset."""
    takes_today = Subscription.frequency == Frequency.DAILY
    if issue_date.weekday() == newsletter.weekly_day:
        takes_today = or_(takes_today, Subscription.frequency == Frequency.WEEKLY)
    return [
        Subscription.newsletter_id == newsletter.id,
        Subscription.active.is_(True),
        Subscriber.status == SubscriberStatus.ACTIVE,
        takes_today,
        or_(Subscription.paused_until.is_(None), Subscription.paused_until <= issue_date),
        Subscription.sunset_at.is_(None),
    ]


# Days between the editions a reader of each frequency takes.
PERIOD_DAYS = {Frequency.DAILY: 1, Frequency.WEEKLY: 7}


def _regular_edition(
    session: Session, newsletter: Newsletter, issue_date: date, blocks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stories a regular reader of this day's edition gets, in order: a reader who had
    every edition of the last week that they take and that went out, judged through the
    ledger as their message will be (digest.ledger.regular_reader). Each frequency that takes
    the day's edition has its regular reader, the largest group's first; the first who gets
    enough leads the subject. A thin day for all of them is not worth an edition (each
    reader is judged again when their message is made)."""
    takers = dict(
        session.execute(
            select(Subscription.frequency, func.count())
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(*_takes(newsletter, issue_date))
            .group_by(Subscription.frequency)
        ).all()
    )
    # With nobody to take it yet, the edition is judged for a daily reader.
    frequencies = sorted(takers, key=lambda f: (-takers[f], f != Frequency.DAILY)) or [
        Frequency.DAILY
    ]
    pool_ids = {item["story_id"] for block in blocks for item in block["items"]}
    needed = max(newsletter.min_items, 1)
    most = 0
    for frequency in frequencies:
        period = PERIOD_DAYS[frequency]
        took = [
            issue_date - timedelta(days=days)
            for days in range(period, POOL_WINDOW.days + 1, period)
        ]
        reader = regular_reader(session, newsletter.id, took, pool_ids)
        personal = personalise(blocks, reader, Limits.of(newsletter))
        shown = [item for block in personal for group in block["groups"] for item in group["items"]]
        if len(shown) >= needed:
            return shown
        most = max(most, len(shown))
    raise NothingToSend(
        f"a thin day for {newsletter.slug} on {issue_date:%Y-%m-%d}: {most} new "
        f"stories, the newsletter needs at least {newsletter.min_items}"
    )


def _frozen(pool: list[Block]) -> list[dict[str, Any]]:
    return [
        {
            "key": block.key,
            "title": block.title,
            "items": [
                {
                    "story_id": story.id,
                    "title": story.title,
                    "section": story.section,
                    "summary": story.summary,
                    "published_at": story.published_at.isoformat(),
                    # When it became news to us: a late feed's story can say it is older
                    # than the reader's last edition and still be new (selection._seen).
                    "seen_at": max(story.first_seen_at, story.published_at).isoformat(),
                }
                for story in block.stories
            ],
        }
        for block in pool
    ]


def _link(
    session: Session, edition: Edition, pool: list[Block], blocks: list[dict[str, Any]]
) -> None:
    """Give every item its tracked link row, made for the stories that have none yet."""
    links = dict(
        session.execute(select(Link.story_id, Link.id).where(Link.edition_id == edition.id)).all()
    )
    campaign = f"{edition.newsletter.slug}-{edition.issue_date:%Y-%m-%d}"
    new = {
        story.id: Link(
            edition_id=edition.id,
            story_id=story.id,
            url=with_utm(story.canonical_url, "newsletter", "email", campaign),
        )
        for block in pool
        for story in block.stories
        if story.id not in links
    }
    session.add_all(new.values())
    session.flush()
    links.update({story_id: link.id for story_id, link in new.items()})
    for block in blocks:
        for item in block["items"]:
            item["link_id"] = links[item["story_id"]]


def extend_pool(session: Session, edition: Edition, cutoff: datetime) -> int:
    """Bring the pool up to ``cutoff`` for a local-time bucket that comes due: its readers get
    the news as of their own send hour, not as of the edition's preparation. Stories are only
    added (each reader's cut-off, ``Reader.cutoff``, keeps earlier buckets' readers from the
    newer ones), so every message already sent stays reproducible from its segment. Returns
    how many stories were added; the caller commits."""
    content = edition.content
    if datetime.fromisoformat(content.get("cutoff", edition.prepared_at.isoformat())) >= cutoff:
        return 0
    pool = select_pool(session, edition.newsletter, cutoff)
    blocks = {block["key"]: dict(block, items=list(block["items"])) for block in content["blocks"]}
    added = 0
    for fresh in _frozen(pool):
        block = blocks.setdefault(fresh["key"], {**fresh, "items": []})
        known = {item["story_id"] for item in block["items"]}
        new = [item for item in fresh["items"] if item["story_id"] not in known]
        block["items"] += new
        added += len(new)
    if added:
        ordered = [blocks[key] for key in BLOCK_ORDER if key in blocks]
        for block in ordered:
            if block["key"] == LATEST:
                block["items"].sort(key=lambda item: item["published_at"], reverse=True)
        _link(session, edition, pool, ordered)
        content = {"blocks": ordered}
    # A new dict, so the JSON column sees the change.
    edition.content = {**content, "cutoff": cutoff.isoformat()}
    return added


def prepare_due_editions(session: Session, now: datetime) -> list[Edition]:
    """Prepare today's edition of every newsletter whose send hour (UTC) has come.

    Called from every beat tick; idempotent through the edition's unique (newsletter, day).
    """
    due = session.scalars(
        select(Newsletter).where(
            Newsletter.send_hour_utc.is_not(None), Newsletter.send_hour_utc <= now.hour
        )
    ).all()
    prepared = []
    for newsletter in due:
        if _find(session, newsletter.id, now.date()) is not None:
            continue
        try:
            prepared.append(prepare_edition(session, newsletter, now.date(), now))
        except NothingToSend as exc:
            log.info("skipped: %s", exc)
        except EditorTemplateError as exc:
            # Tried with sample stories when saved, but a real day can differ (fewer
            # stories than the template indexes); the other newsletters go on.
            log.error("edition of %s not prepared: %s", newsletter.slug, exc)
    return prepared
