"""One reader's edition from the frozen pool: never a story twice, what is new since their last
edition, their sections, section quotas, grouped by section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from digest.selection import (
    DIGESTED,
    LATEST,
    MUST_READS,
    POPULAR,
    Limits,
    Reader,
    from_segment,
    personalise,
    segment_key,
    stored_key,
    story_ids,
)

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)
LIMITS = Limits(must_reads=2, latest=4, section_quota=2, popular=2)


def item(story_id: int, section: str = "World", hours_ago: int = 1) -> dict[str, Any]:
    return {
        "story_id": story_id,
        "link_id": 1000 + story_id,
        "title": f"Story {story_id}",
        "section": section,
        "summary": "",
        "published_at": (NOW - timedelta(hours=hours_ago)).isoformat(),
    }


POOL = [
    {"key": MUST_READS, "title": "Must-Reads", "items": [item(1, "Opinion"), item(2), item(3)]},
    {
        "key": LATEST,
        "title": "Latest Stories",
        "items": [
            item(10, "World", 1),
            item(11, "World", 2),
            item(12, "World", 3),
            item(13, "Sport", 4),
            item(14, "Business", 30),
            item(15, "Sport", 50),
        ],
    },
    {"key": POPULAR, "title": "Popular Now", "items": [item(10), item(20), item(21), item(22)]},
]


def test_a_new_reader_gets_each_blocks_limit_with_a_quota_per_section() -> None:
    blocks = personalise(POOL, Reader(), LIMITS)
    assert [b["key"] for b in blocks] == [MUST_READS, LATEST, POPULAR]
    assert story_ids(blocks) == (1, 2, 10, 11, 13, 14, 20, 21)
    # Latest by section: headings in the order of each section's newest story.
    assert [(g["heading"], [i["story_id"] for i in g["items"]]) for g in blocks[1]["groups"]] == [
        ("World", [10, 11]),
        ("Sport", [13]),
        ("Business", [14]),
    ]
    assert [g["heading"] for g in blocks[0]["groups"]] == [""]


def test_stories_already_received_are_replaced_from_the_pool() -> None:
    blocks = personalise(POOL, Reader(received=frozenset({1, 10, 20})), LIMITS)
    assert story_ids(blocks) == (2, 3, 11, 12, 13, 14, 21, 22)


def test_only_latest_stories_published_since_the_last_edition() -> None:
    blocks = personalise(POOL, Reader(since=NOW - timedelta(hours=4, minutes=30)), LIMITS)
    latest = next(b for b in blocks if b["key"] == LATEST)
    # 12 is new too, but World has had its quota; 14 and 15 are older than the last edition.
    assert [i["story_id"] for g in latest["groups"] for i in g["items"]] == [10, 11, 13]
    # Must-Reads and Popular Now are not bound to the time, only to the ledger.
    assert story_ids(blocks)[:2] == (1, 2)


def test_a_late_story_is_new_from_when_it_was_first_seen() -> None:
    # Published long before the reader's last edition, but its feed brought it only since.
    late = {**item(16, "Business", 30), "seen_at": (NOW - timedelta(hours=1)).isoformat()}
    pool = [POOL[0], {**POOL[1], "items": [*POOL[1]["items"], late]}, POOL[2]]
    reader = Reader(since=NOW - timedelta(hours=4, minutes=30))
    latest = next(b for b in personalise(pool, reader, LIMITS) if b["key"] == LATEST)
    assert [i["story_id"] for g in latest["groups"] for i in g["items"]] == [10, 11, 13, 16]
    # Frozen before items carried it: judged by the publication time, as it was then.
    frozen_earlier = [POOL[0], {**POOL[1], "items": [*POOL[1]["items"], item(16, "Business", 30)]}]
    assert 16 not in story_ids(personalise(frozen_earlier, reader, LIMITS))


def test_sections_filter_all_but_the_must_reads() -> None:
    blocks = personalise(POOL, Reader(sections=frozenset({"sport"})), LIMITS)
    assert story_ids(blocks) == (1, 2, 13, 15)


def test_a_reader_with_nothing_new_gets_empty_blocks_left_out() -> None:
    everything = frozenset(i["story_id"] for b in POOL for i in b["items"])
    assert personalise(POOL, Reader(received=everything), LIMITS) == []


@given(
    received=st.frozensets(st.sampled_from([1, 2, 3, 10, 11, 12, 13, 14, 15, 20, 21, 22])),
    sections=st.none() | st.frozensets(st.sampled_from(["world", "sport", "opinion", "x"])),
    hours=st.none() | st.integers(min_value=0, max_value=60),
)
def test_never_a_story_twice_nor_one_already_received(received, sections, hours) -> None:
    since = None if hours is None else NOW - timedelta(hours=hours)
    shown = story_ids(personalise(POOL, Reader(sections, received, since), LIMITS))
    assert len(shown) == len(set(shown))
    assert not set(shown) & received


def test_content_frozen_before_publication_times_were_kept_still_sends() -> None:
    old = [
        {
            **block,
            "items": [{k: v for k, v in i.items() if k != "published_at"} for i in block["items"]],
        }
        for block in POOL
    ]
    reader = Reader(since=NOW - timedelta(hours=1), cutoff=NOW - timedelta(hours=5))
    assert story_ids(personalise(old, reader, LIMITS)) == (1, 2, 10, 11, 13, 14, 20, 21)


def test_a_segment_key_rebuilds_what_the_reader_got() -> None:
    for reader in (
        Reader(),
        Reader(sections=frozenset({"sport"})),
        Reader(received=frozenset({1})),
    ):
        blocks = personalise(POOL, reader, LIMITS)
        assert from_segment(POOL, segment_key(blocks)) == blocks


def test_a_key_too_long_to_store_rebuilds_from_the_segments_stories() -> None:
    latest = [item(100 + n, "World", n) for n in range(40)]
    pool = [
        POOL[0],
        {**POOL[1], "items": latest},
        # Popular Now repeats a latest story, as the pool may.
        {**POOL[2], "items": [latest[0], item(20)]},
    ]
    limits = Limits(must_reads=2, latest=40, section_quota=40, popular=2)
    for reader in (Reader(), Reader(received=frozenset({1, 100}))):
        blocks = personalise(pool, reader, limits)
        key = segment_key(blocks)
        stored = stored_key(key, 100)
        assert len(key) > 100 and stored.startswith(DIGESTED) and len(stored) <= 100
        assert from_segment(pool, stored, set(story_ids(blocks))) == blocks
    # A key that fits is stored as it is, as every key was before.
    short = segment_key(personalise(POOL, Reader(), LIMITS))
    assert stored_key(short, 2000) == short


def test_thin_day_cancellations_do_not_pause_an_edition() -> None:
    from collections import Counter

    from digest.models import DeliveryState
    from digest.sending import _auto_pause_reason

    thin = Counter({DeliveryState.CANCELLED: 40, DeliveryState.SENT: 10})
    assert _auto_pause_reason(thin, unknown_in_a_row=0) is None
    failing = Counter({DeliveryState.FAILED: 15, DeliveryState.SENT: 10})
    assert _auto_pause_reason(failing, unknown_in_a_row=0)
