"""The sent-stories ledger: which stories each reader has received, in any digest.

A delivery records the segment (the set of stories) it carried as it enters the SMTP window,
in the same UPDATE that marks it ``sending``: no extra statement per message. A delivery that
is ``sending``, ``sent`` or ``unknown`` counts as received, since once in the window it may
have gone out; a deferred or failed one does not, and its retry chooses again.

Two newsletters sending to one reader at the same moment could both pick a story neither has
recorded yet: a message therefore enters the SMTP window only if the reader has not received
one of its stories meanwhile (digest.sending._begin), and is chosen again if they have.

A segment's key names its stories block by block (digest.selection.segment_key); one too long
for its column is stored as its digest, and the stories are then read from the segment's
story rows (``segment_blocks``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from digest.db import upsert_insert
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    EditionSegment,
    SegmentStory,
    utcnow,
)
from digest.selection import DIGESTED, Reader, chosen_sections, from_segment, stored_key

RECEIVED = (DeliveryState.SENDING, DeliveryState.SENT, DeliveryState.UNKNOWN)
# What the segment key column holds (digest.models); longer keys are stored as a digest.
KEY_LENGTH: int = EditionSegment.__table__.c.key.type.length


class SegmentUnavailable(Exception):
    """The database would not give a message its segment; the batch's transaction is intact."""


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


def regular_reader(
    session: Session, newsletter_id: int, took: Collection[date], story_ids: Collection[int]
) -> Reader:
    """A reader who took the newsletter's editions of the ``took`` dates and got what most of
    each one's readers got: of ``story_ids``, those the most common segment of each edition
    that went out carried, and, as ``since``, when the latest of those was prepared. This is
    the ledger's view of a regular reader before an edition has an audience to ask about:
    two aggregate queries, none per subscriber. Editions nobody received do not count."""
    rows = session.execute(
        select(
            Edition.id.label("edition_id"),
            Edition.prepared_at,
            Delivery.segment_id,
            func.count().label("deliveries"),
        )
        .join(Delivery, Delivery.edition_id == Edition.id)
        .where(
            Edition.newsletter_id == newsletter_id,
            Edition.issue_date.in_(took),
            Delivery.state.in_(RECEIVED),
        )
        .group_by(Edition.id, Edition.prepared_at, Delivery.segment_id)
    ).all()
    since = max((row.prepared_at for row in rows), default=None)
    # Per edition, the segment most deliveries carried (ties: the older segment). Messages
    # sent before segments were recorded carry none and count only for ``since``.
    common: dict[int, int] = {}
    for row in sorted(rows, key=lambda row: (-row.deliveries, row.segment_id or 0)):
        if row.segment_id is not None:
            common.setdefault(row.edition_id, row.segment_id)
    received: set[int] = set()
    if common and story_ids:
        received.update(
            session.scalars(
                select(SegmentStory.story_id).where(
                    SegmentStory.segment_id.in_(common.values()),
                    SegmentStory.story_id.in_(story_ids),
                )
            )
        )
    return Reader(received=frozenset(received), since=since)


def segment(session: Session, edition_id: int, key: str, story_ids: Iterable[int]) -> int:
    """The id of the edition's segment ``key`` (digest.selection.segment_key) carrying
    ``story_ids``, created if new and committed at once, so that a concurrent batch that needs
    the same segment waits only for this.

    Raises SegmentUnavailable if the database refuses this segment's rows (a story deleted
    since the edition was frozen, say): they are undone to a savepoint, so the batch's pending
    outcomes survive and only this message fails. Other database errors (a lock, a lost
    connection) are the batch's, not the message's, and propagate."""
    ids = set(story_ids)
    stored = stored_key(key, KEY_LENGTH)
    find = select(EditionSegment.id).where(
        EditionSegment.edition_id == edition_id, EditionSegment.key == stored
    )
    found = session.scalar(find)
    if found is not None:
        return found
    try:
        # Writes only: on SQLite a savepoint that read first could not take the write lock
        # once another worker had written, and would fail instead of waiting for it.
        with session.begin_nested():
            created = session.scalar(
                upsert_insert(session, EditionSegment)
                .values(edition_id=edition_id, key=stored, created_at=utcnow())
                .on_conflict_do_nothing()
                .returning(EditionSegment.id)
            )
            if created is not None and ids:
                session.execute(
                    insert(SegmentStory), [{"segment_id": created, "story_id": s} for s in ids]
                )
    except (IntegrityError, DataError) as exc:
        # The driver's message, not the statement with every story row's parameters.
        raise SegmentUnavailable(f"no segment for edition {edition_id}: {exc.orig}") from exc
    if created is None:  # a concurrent batch made it first
        created = session.scalar(find)
        assert created is not None
    session.commit()
    return created


def segment_blocks(
    session: Session, pool: list[dict[str, Any]], segment_id: int
) -> list[dict[str, Any]] | None:
    """What the segment's messages showed, rebuilt from the edition's frozen ``pool``; None if
    there is no such segment."""
    key = session.scalar(select(EditionSegment.key).where(EditionSegment.id == segment_id))
    if key is None:
        return None
    carried: set[int] = set()
    if key.startswith(DIGESTED):
        carried.update(
            session.scalars(
                select(SegmentStory.story_id).where(SegmentStory.segment_id == segment_id)
            )
        )
    return from_segment(pool, key, carried)
