"""Which stories go into a newsletter's edition: must-reads first, then the latest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Newsletter, Story

LATEST_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Block:
    key: str
    title: str
    stories: list[Story]


def select_blocks(session: Session, newsletter: Newsletter, now: datetime) -> list[Block]:
    """The blocks of an edition cut off at ``now``; empty blocks are left out."""
    must_reads = list(
        session.scalars(
            select(Story)
            .where(Story.must_read_rank.is_not(None), Story.published_at <= now)
            .order_by(Story.must_read_rank, Story.id)
            .limit(newsletter.must_read_limit)
        )
    )
    already = [s.id for s in must_reads]
    latest = list(
        session.scalars(
            select(Story)
            .where(
                Story.published_at > now - LATEST_WINDOW,
                Story.published_at <= now,
                Story.id.not_in(already),
            )
            .order_by(Story.published_at.desc(), Story.id.desc())
            .limit(newsletter.latest_limit)
        )
    )
    blocks = [
        Block("must_reads", "Must-Reads", must_reads),
        Block("latest", "Latest Stories", latest),
    ]
    return [b for b in blocks if b.stories]
