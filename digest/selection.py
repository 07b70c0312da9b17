"""Which stories go into a newsletter's edition: must-reads first, then the latest, then
what is popular now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from digest.models import Click, ClickKind, Link, Listing, Newsletter, SourceRole, Story

LATEST_WINDOW = timedelta(hours=24)
POPULAR_WINDOW = timedelta(hours=24)
# The block every reader gets, whatever sections they chose (digest.render).
MUST_READS = "must_reads"


@dataclass(frozen=True)
class Block:
    key: str
    title: str
    stories: list[Story]


def must_reads(session: Session, now: datetime, limit: int) -> list[Story]:
    """Editor pins first (newest pin first), then the site's must-read lists by rank."""
    listed = (
        select(Listing.story_id, func.min(Listing.rank).label("rank"))
        .where(Listing.role == SourceRole.MUST_READ)
        .group_by(Listing.story_id)
        .subquery()
    )
    pinned = Story.pinned_until > now
    return list(
        session.scalars(
            select(Story)
            .outerjoin(listed, listed.c.story_id == Story.id)
            .where(or_(pinned, listed.c.rank.is_not(None)), Story.published_at <= now)
            .order_by(
                case((pinned, 0), else_=1),
                # Only a pin in force counts, and NULLs sort alike on every backend.
                case((pinned, Story.pinned_until)).desc().nulls_last(),
                listed.c.rank.nulls_last(),
                Story.id,
            )
            .limit(limit)
        )
    )


def popular(session: Session, now: datetime, limit: int, exclude: list[int]) -> list[Story]:
    """Popular Now: unique human clicks over the last 24 hours lead; the site's own popular
    list fills the rest. Scanner and bot clicks never make a story popular."""
    clicks = (
        select(
            Link.story_id,
            # Unique per delivery; a click without one (a shared link) counts on its own.
            func.count(func.distinct(func.coalesce(Click.delivery_id, -Click.id))).label("n"),
        )
        .join(Click, Click.link_id == Link.id)
        .where(Click.kind == ClickKind.HUMAN, Click.clicked_at > now - POPULAR_WINDOW)
        .group_by(Link.story_id)
        .subquery()
    )
    listed = (
        select(Listing.story_id, func.min(Listing.rank).label("rank"))
        .where(Listing.role == SourceRole.POPULAR)
        .group_by(Listing.story_id)
        .subquery()
    )
    return list(
        session.scalars(
            select(Story)
            .outerjoin(clicks, clicks.c.story_id == Story.id)
            .outerjoin(listed, listed.c.story_id == Story.id)
            .where(
                or_(clicks.c.n.is_not(None), listed.c.rank.is_not(None)),
                Story.published_at <= now,
                Story.id.not_in(exclude),
            )
            .order_by(clicks.c.n.desc().nulls_last(), listed.c.rank.nulls_last(), Story.id)
            .limit(limit)
        )
    )


def select_blocks(session: Session, newsletter: Newsletter, now: datetime) -> list[Block]:
    """The blocks of an edition cut off at ``now``; empty blocks are left out."""
    picks = must_reads(session, now, newsletter.must_read_limit)
    latest = list(
        session.scalars(
            select(Story)
            .where(
                Story.published_at > now - LATEST_WINDOW,
                Story.published_at <= now,
                Story.id.not_in([s.id for s in picks]),
            )
            .order_by(Story.published_at.desc(), Story.id.desc())
            .limit(newsletter.latest_limit)
        )
    )
    shown = [s.id for s in picks + latest]
    blocks = [
        Block(MUST_READS, "Must-Reads", picks),
        Block("latest", "Latest Stories", latest),
        Block("popular", "Popular Now", popular(session, now, newsletter.popular_limit, shown)),
    ]
    return [b for b in blocks if b.stories]
