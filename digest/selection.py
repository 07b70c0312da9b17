"""Which stories go into a newsletter's edition: must-reads first, then the latest by section,
then what is popular now; and which of them each reader gets."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from digest.models import Click, ClickKind, Link, Listing, Newsletter, SourceRole, Story

# The pool reaches back a week, so that weekly readers and readers back from a pause get what
# they missed; daily readers get only what is new since their last edition (``personalise``).
POOL_WINDOW = timedelta(days=7)
POPULAR_WINDOW = timedelta(hours=24)
# Each block's pool holds this many times what one reader gets.
POOL_DEPTH = 3
# The block every reader gets, whatever sections they chose.
MUST_READS = "must_reads"
LATEST = "latest"
POPULAR = "popular"
BLOCK_ORDER = (MUST_READS, LATEST, POPULAR)


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


def latest(
    session: Session, now: datetime, per_section: int, limit: int, exclude: list[int]
) -> list[Story]:
    """The newest stories of the pool's window, at most ``per_section`` from any one section."""
    ranked = (
        select(
            Story.id,
            func.row_number()
            .over(
                partition_by=Story.section,
                order_by=(Story.published_at.desc(), Story.id.desc()),
            )
            .label("n"),
        )
        .where(
            Story.published_at > now - POOL_WINDOW,
            Story.published_at <= now,
            Story.id.not_in(exclude),
        )
        .subquery()
    )
    return list(
        session.scalars(
            select(Story)
            .join(ranked, ranked.c.id == Story.id)
            .where(ranked.c.n <= per_section)
            .order_by(Story.published_at.desc(), Story.id.desc())
            .limit(limit)
        )
    )


def select_pool(session: Session, newsletter: Newsletter, now: datetime) -> list[Block]:
    """The stories an edition cut off at ``now`` may show, in order, block by block: more than
    any one reader gets (``POOL_DEPTH`` times each block's limit), so a reader who already
    received some of them still gets a full edition (``personalise``). Empty blocks are
    left out."""
    picks = must_reads(session, now, newsletter.must_read_limit * POOL_DEPTH)
    newest = latest(
        session,
        now,
        newsletter.section_quota * POOL_DEPTH,
        newsletter.latest_limit * POOL_DEPTH,
        [s.id for s in picks],
    )
    # Popular Now may repeat stories of the latest pool: each reader gets a story once, in the
    # first block that has it (``personalise``), and popular ones they get among the latest
    # leave room for others here.
    blocks = [
        Block(MUST_READS, "Must-Reads", picks),
        Block(LATEST, "Latest Stories", newest),
        Block(
            POPULAR,
            "Popular Now",
            popular(session, now, newsletter.popular_limit * POOL_DEPTH, [s.id for s in picks]),
        ),
    ]
    return [b for b in blocks if b.stories]


@dataclass(frozen=True)
class Limits:
    """How many stories of each block one reader gets (the newsletter's settings)."""

    must_reads: int
    latest: int
    section_quota: int
    popular: int

    @classmethod
    def of(cls, newsletter: Newsletter) -> Limits:
        return cls(
            newsletter.must_read_limit,
            newsletter.latest_limit,
            newsletter.section_quota,
            newsletter.popular_limit,
        )


@dataclass(frozen=True)
class Reader:
    """What personalises an edition: the sections chosen (None: all), the stories already
    received in any digest, when this newsletter last reached them (None: never), and the
    news they are due: stories published up to ``cutoff`` (their local send time, or when
    the edition was prepared; None: the whole pool). The latest stories new to them are those
    we first saw after ``since``, whatever time they say they were published."""

    sections: frozenset[str] | None = None
    received: frozenset[int] = frozenset()
    since: datetime | None = None
    cutoff: datetime | None = None


def chosen_sections(sections: list[str] | None) -> frozenset[str] | None:
    """A reader's section choice as ``Reader.sections`` compares it (case does not matter)."""
    return None if sections is None else frozenset(s.casefold() for s in sections)


def personalise(
    blocks: list[dict[str, Any]], reader: Reader, limits: Limits
) -> list[dict[str, Any]]:
    """One reader's edition from the frozen pool: never a story they already received; of the
    latest, only those seen since this newsletter last reached them, from the sections
    they chose, at most ``section_quota`` per section, grouped by section; Must-Reads go to
    everyone. Blocks keep their frozen order; an empty block is left out. Each returned
    block has ``groups``: ``[{"heading": section or "", "items": [...]}]``."""
    seen = set(reader.received)
    chosen = reader.sections

    def fresh(item: dict[str, Any]) -> bool:
        return item["story_id"] not in seen and (
            reader.cutoff is None or _published(item, reader.cutoff) <= reader.cutoff
        )

    def in_sections(item: dict[str, Any]) -> bool:
        return chosen is None or item.get("section", "").casefold() in chosen

    result = []
    for block in blocks:
        key = block.get("key")
        items: list[dict[str, Any]] = []
        if key == MUST_READS:
            items = [i for i in block["items"] if fresh(i)][: limits.must_reads]
        elif key == LATEST:
            per_section: Counter[str] = Counter()
            for item in block["items"]:
                if len(items) == limits.latest:
                    break
                section = item.get("section", "").casefold()
                if (
                    fresh(item)
                    and in_sections(item)
                    and (reader.since is None or _seen(item) > reader.since)
                    and per_section[section] < limits.section_quota
                ):
                    per_section[section] += 1
                    items.append(item)
        else:
            items = [i for i in block["items"] if fresh(i) and in_sections(i)][: limits.popular]
        seen.update(i["story_id"] for i in items)
        if items:
            result.append({"key": key, "title": block["title"], "groups": _grouped(key, items)})
    return result


# Editions frozen before items carried their publication time: such items pass every time
# filter, as they did when those editions were prepared.
NEWEST = datetime.max.replace(tzinfo=UTC)


def _published(item: dict[str, Any], unknown: datetime) -> datetime:
    published = item.get("published_at")
    return unknown if published is None else datetime.fromisoformat(published)


def _seen(item: dict[str, Any]) -> datetime:
    """When the story became news to us (``seen_at``: the later of its first sighting and its
    publication): a feed that is late brings stories that say they are older than the
    reader's last edition yet were not in it. Items frozen before they carried it fall back
    to their publication time, as those editions were judged."""
    seen = item.get("seen_at")
    return _published(item, NEWEST) if seen is None else datetime.fromisoformat(seen)


def _grouped(key: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latest Stories by section, sections in the order of their newest story; other blocks
    are one group without a heading."""
    if key != LATEST:
        return [{"heading": "", "items": items}]
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item.get("section", ""), []).append(item)
    return [{"heading": heading, "items": group} for heading, group in groups.items()]


def segment_key(blocks: list[dict[str, Any]]) -> str:
    """What a reader got, as text: each block's story ids in order (``latest:7,3;popular:9``).
    Readers with the same key get the same message but for their own URLs."""
    return ";".join(
        f"{block['key']}:"
        + ",".join(str(item["story_id"]) for group in block["groups"] for item in group["items"])
        for block in blocks
    )


# A stored segment key that is the digest of a key too long for its column, not a key itself:
# readable keys start with a block's key.
DIGESTED = "sha256:"


def stored_key(key: str, length: int) -> str:
    """``key`` as a segment row stores it in at most ``length`` characters: as it is if it fits
    (as every key did before long ones were digested, so those rows still match), else its
    digest, equally unique per edition. ``from_segment`` reads both."""
    if len(key) <= length:
        return key
    return DIGESTED + hashlib.sha256(key.encode()).hexdigest()


def from_segment(
    pool: list[dict[str, Any]], key: str, carried: Collection[int] = ()
) -> list[dict[str, Any]]:
    """The personalised blocks a stored segment key stands for, rebuilt from the frozen pool.

    A digested key names no stories: they are ``carried`` (the segment's stories, from the
    ledger), each in the first block that holds it and in the pool's order, as ``personalise``
    placed them. Only a story the pool holds in two blocks that the reader got in the later
    one (passed over in Latest, then picked in Popular Now) is shown in the earlier one."""
    blocks = {block["key"]: block for block in pool}
    chosen: list[tuple[str, list[dict[str, Any]]]] = []
    if key.startswith(DIGESTED):
        placed: set[int] = set()
        for block in pool:
            items = [
                i
                for i in block["items"]
                if i["story_id"] in carried and i["story_id"] not in placed
            ]
            placed.update(i["story_id"] for i in items)
            if items:
                chosen.append((block["key"], items))
    else:
        for part in key.split(";") if key else []:
            block_key, _, ids = part.partition(":")
            by_id = {item["story_id"]: item for item in blocks[block_key]["items"]}
            chosen.append((block_key, [by_id[int(story_id)] for story_id in ids.split(",")]))
    return [
        {
            "key": block_key,
            "title": blocks[block_key]["title"],
            "groups": _grouped(block_key, items),
        }
        for block_key, items in chosen
    ]


def story_ids(blocks: list[dict[str, Any]]) -> tuple[int, ...]:
    """The stories of personalised blocks, in the order shown."""
    return tuple(
        item["story_id"] for block in blocks for group in block["groups"] for item in group["items"]
    )
