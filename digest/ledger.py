"""The sent-stories ledger: which stories each reader has received, in any digest.

A delivery records the segment (the set of stories) it carried as it enters the SMTP window,
in the same UPDATE that marks it ``sending``: no extra statement per message. A delivery that
is ``sending``, ``sent`` or ``unknown`` counts as received, since once in the window it may
have gone out; a deferred or failed one does not, and its retry chooses again.

Two newsletters sending to one reader at the same moment can both pick a story neither has
recorded yet; the ledger stops repeats from the next batch on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    EditionSegment,
    SegmentStory,
    utcnow,
)
from digest.selection import Reader, chosen_sections

RECEIVED = (DeliveryState.SENDING, DeliveryState.SENT, DeliveryState.UNKNOWN)


def received_stories(
    session: Session, subscriber_ids: Collection[int], story_ids: Collection[int]
) -> dict[int, set[int]]:
    """Of ``story_ids``, those each subscriber has received, by subscriber."""
    result: dict[int, set[int]] = {}
    if not subscriber_ids or not story_ids:
        return result
    rows = session.execute(
        select(Delivery.subscriber_id, SegmentStory.story_id)
        .join(SegmentStory, SegmentStory.segment_id == Delivery.segment_id)
        .where(
            Delivery.subscriber_id.in_(subscriber_ids),
            Delivery.state.in_(RECEIVED),
            SegmentStory.story_id.in_(story_ids),
        )
    )
    for subscriber_id, story_id in rows:
        result.setdefault(subscriber_id, set()).add(story_id)
    return result


def last_received(
    session: Session, newsletter_id: int, subscriber_ids: Collection[int], before: Edition
) -> dict[int, datetime]:
    """When each subscriber's latest earlier edition of the newsletter was cut off (prepared):
    stories published after it are new to them."""
    if not subscriber_ids:
        return {}
    rows = session.execute(
        select(Delivery.subscriber_id, func.max(Edition.prepared_at))
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(
            Edition.newsletter_id == newsletter_id,
            Edition.id != before.id,
            Edition.prepared_at < before.prepared_at,
            Delivery.subscriber_id.in_(subscriber_ids),
            Delivery.state.in_(RECEIVED),
        )
        .group_by(Delivery.subscriber_id)
    )
    return {subscriber_id: prepared for subscriber_id, prepared in rows}


def readers(
    session: Session,
    edition: Edition,
    sections: Mapping[int, list[str] | None],
    cutoffs: Mapping[int, datetime | None] | None = None,
) -> dict[int, Reader]:
    """What personalises the edition for each subscriber in ``sections`` (their chosen
    sections, None: all): the pool's stories they have received, when this newsletter last
    reached them, and their cut-off (``cutoffs``; absent: the whole pool)."""
    ids = list(sections)
    pool = {item["story_id"] for block in edition.content["blocks"] for item in block["items"]}
    received = received_stories(session, ids, pool)
    since = last_received(session, edition.newsletter_id, ids, edition)
    return {
        subscriber_id: Reader(
            sections=chosen_sections(sections[subscriber_id]),
            received=frozenset(received.get(subscriber_id, ())),
            since=since.get(subscriber_id),
            cutoff=(cutoffs or {}).get(subscriber_id),
        )
        for subscriber_id in ids
    }


def segment(session: Session, edition_id: int, key: str, story_ids: Iterable[int]) -> int:
    """The id of the edition's segment ``key`` (digest.selection.segment_key) carrying
    ``story_ids``, created if new and committed at once, so that a concurrent batch that needs
    the same segment waits only for this."""
    ids = set(story_ids)
    find = select(EditionSegment.id).where(
        EditionSegment.edition_id == edition_id, EditionSegment.key == key
    )
    found = session.scalar(find)
    if found is not None:
        return found
    dialect = session.get_bind().dialect.name
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    created = session.scalar(
        dialect_insert(EditionSegment)
        .values(edition_id=edition_id, key=key, created_at=utcnow())
        .on_conflict_do_nothing()
        .returning(EditionSegment.id)
    )
    if created is None:  # a concurrent batch made it first
        found = session.scalar(find)
        assert found is not None
        session.commit()
        return found
    if ids:
        session.execute(insert(SegmentStory), [{"segment_id": created, "story_id": s} for s in ids])
    session.commit()
    return created
