"""One reader's edition from the frozen pool: never a story twice, what is new since their last
edition, their sections, section quotas, grouped by section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from digest.selection import (
    LATEST,
    MUST_READS,
    POPULAR,
    Limits,
    Reader,
    from_segment,
    personalise,
    segment_key,
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


def test_thin_day_cancellations_do_not_pause_an_edition() -> None:
    from collections import Counter

    from digest.models import DeliveryState
    from digest.sending import _auto_pause_reason

    assert (
        _auto_pause_reason(Counter({DeliveryState.CANCELLED: 40, DeliveryState.SENT: 10})) is None
    )
    assert _auto_pause_reason(Counter({DeliveryState.FAILED: 15, DeliveryState.SENT: 10}))
