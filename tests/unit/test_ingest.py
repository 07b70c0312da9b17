"""Feed parsing and story ingestion: canonical URLs, hostile markup, bad feeds, upserts, listings.

Sources here are ``file://`` feeds inside the data directory, read by the real Fetcher. Every
item carries a summary and a date, so ingestion never goes out to fetch a story page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.db import migrate, session_factory
from digest.feeds import MAX_FEED_BYTES, IngestError, canonical_url, parse_feed, plain_text
from digest.fetch import Allowlist, Fetcher
from digest.ingest import CLAIM_LEASE, IngestResult, claim_due_sources, ingest_source
from digest.models import Listing, Source, SourceRole, Story, StoryRevision, utcnow
from digest.sample_site import LISTS, SITE, rss_feed
from digest.selection import must_reads

NOW = datetime(2024, 12, 10, 9, 30, tzinfo=UTC)
FEED_URL = f"{SITE}/feeds/latest.xml"


@dataclass(frozen=True)
class Item:
    title: str
    link: str
    guid: str | None = None
    category: str = ""
    summary: str = "What happened."
    published: datetime | None = NOW


def rss(*items: Item) -> bytes:
    body = "".join(
        "<item>"
        f"<title>{escape(item.title)}</title><link>{escape(item.link)}</link>"
        + (f'<guid isPermaLink="false">{escape(item.guid)}</guid>' if item.guid else "")
        + (f"<category>{escape(item.category)}</category>" if item.category else "")
        + (f"<description>{escape(item.summary)}</description>" if item.summary else "")
        + (f"<pubDate>{format_datetime(item.published)}</pubDate>" if item.published else "")
        + "</item>"
        for item in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<rss version="2.0"><channel><title>Example</title>{body}</channel></rss>'
    ).encode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://News.Example.COM/World/Story", "https://news.example.com/World/Story"),
        ("http://news.example.com:80/a", "http://news.example.com/a"),
        ("https://news.example.com:443/a", "https://news.example.com/a"),
        ("https://news.example.com:8443/a", "https://news.example.com:8443/a"),
        ("http://news.example.com:443/a", "http://news.example.com:443/a"),
        ("https://news.example.com/a#comments", "https://news.example.com/a"),
        (
            "https://news.example.com/a?utm_source=rss&id=3&UTM_Medium=feed&b=&fbclid=x&gclid=y",
            "https://news.example.com/a?id=3&b=",
        ),
        ("https://news.example.com/a?z=1&a=2&m=3", "https://news.example.com/a?z=1&a=2&m=3"),
        ("https://news.example.com", "https://news.example.com/"),
        ("https://news.example.com?page=2", "https://news.example.com/?page=2"),
        ("  https://news.example.com/a  ", "https://news.example.com/a"),
        ("http://[2001:db8::1]:8080/a", "http://[2001:db8::1]:8080/a"),
        ("http://[2001:db8::1]/a", "http://[2001:db8::1]/a"),
    ],
)
def test_canonical_url(url, expected):
    assert canonical_url(url) == expected
    assert canonical_url(expected) == expected


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<p>Hello <b>world</b></p>", "Hello world"),
        ("Before<script>alert(1)</script> after", "Before after"),
        ("<style>p { color: red }</style>Styled", "Styled"),
        ("Tom &amp; Jerry &#8217;s", "Tom & Jerry ’s"),
        ("  spread\n\tout   words ", "spread out words"),
        ("No markup at all", "No markup at all"),
    ],
)
def test_plain_text(markup, expected):
    assert plain_text(markup) == expected


@pytest.mark.parametrize("role", list(SourceRole))
def test_sample_feed_parses_to_its_list(role):
    stories = LISTS[role]

    items = parse_feed(rss_feed(role, NOW).encode(), FEED_URL)

    assert [i.title for i in items] == [s.title for s in stories]
    assert [i.section for i in items] == [s.section for s in stories]
    assert [i.summary for i in items] == [s.summary for s in stories]
    assert [i.url for i in items] == [s.url for s in stories]
    assert [i.guid for i in items] == [f"{SITE}/story/{s.slug}" for s in stories]
    assert [i.published_at for i in items] == [
        NOW - timedelta(minutes=s.minutes_ago) for s in stories
    ]
    assert all(i.published_at.tzinfo == UTC for i in items)


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Example News</title>
  <id>urn:example:news</id>
  <updated>2024-12-10T09:30:00Z</updated>
  <entry>
    <title type="html">&lt;b&gt;Seoul&lt;/b&gt; talks resume</title>
    <link rel="alternate" href="https://News.Example.com:443/asia/seoul-talks?utm_campaign=x#top"/>
    <id>tag:news.example.com,2024:seoul-talks</id>
    <updated>2024-12-10T18:30:00+09:00</updated>
    <category term="asia"/>
    <summary>Negotiators meet again.</summary>
    <author><name>Kim Min-ji</name></author>
  </entry>
</feed>
"""

JSON_FEED = json.dumps(
    {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "Example News",
        "home_page_url": f"{SITE}/",
        "items": [
            {
                "id": "tag:news.example.com,2024:seoul-talks",
                "url": f"{SITE}/asia/seoul-talks?utm_source=json",
                "title": "<b>Seoul</b> talks resume",
                "summary": "Negotiators meet again.",
                "date_published": "2024-12-10T18:30:00+09:00",
                "tags": ["asia"],
                "authors": [{"name": "Kim Min-ji"}],
            }
        ],
    }
).encode()


@pytest.mark.parametrize("document", [ATOM, JSON_FEED], ids=["atom", "json-feed"])
def test_other_feed_formats(document):
    (item,) = parse_feed(document, FEED_URL)

    assert item.url == f"{SITE}/asia/seoul-talks"
    assert item.guid == "tag:news.example.com,2024:seoul-talks"
    assert item.title == "Seoul talks resume"
    assert item.summary == "Negotiators meet again."
    assert item.section == "ASIA"
    assert item.author == "Kim Min-ji"
    assert item.published_at == datetime(2024, 12, 10, 9, 30, tzinfo=UTC)


_CAFE = (
    '<rss version="2.0"><channel><item><title>Café talks</title><link>/a</link></item></channel>'
)


@pytest.mark.parametrize(
    "document",
    [
        ('<?xml version="1.0" encoding="UTF-8"?>' + _CAFE + "</rss>").encode("latin-1"),
        ('<?xml version="1.0" encoding="ISO-8859-1"?>' + _CAFE + "</rss>").encode("utf-8"),
        (_CAFE + "</rss>").encode("utf-8"),
        ('<?xml version="1.0" encoding="UTF-16"?>' + _CAFE + "</rss>").encode("utf-16"),
    ],
    ids=["declared-utf8-sent-latin1", "declared-latin1-sent-utf8", "undeclared", "utf16-bom"],
)
def test_wrong_or_missing_encoding_still_reads_the_words(document):
    (item,) = parse_feed(document, FEED_URL)

    assert item.title == "Café talks"
    assert item.published_at is None  # no date in the feed: the ingest time stands in later


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Cut', "not a usable feed"),
        (b"<!DOCTYPE html><html><body><h1>Not found</h1></body></html>", "not a usable feed"),
        (b"", "not a usable feed"),
        (b'<rss version="2.0"><channel><title>Empty</title></channel></rss>', "no items"),
        (rss(Item("", f"{SITE}/a"), Item("No link", "")), "none with both a link and a title"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": []}', "no items"),
        (b'{"title": "JSON, but no feed"}', "JSON without a JSON Feed version"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "not a usable JSON"),
        (rss(Item("Huge", f"{SITE}/a")) + b" " * MAX_FEED_BYTES, "limit"),
        # Skipped or refused, either way an IngestError: ingest_source records nothing else.
        (rss(Item("Bad port", "http://news.example.com:99999/a")), None),
        (rss(Item("Not the web", "javascript:alert(1)")), None),
        # feedparser itself turns "http:///a" into "http://a"; JSON Feed links arrive as given.
        (
            b'{"version": "https://jsonfeed.org/version/1.1",'
            b' "items": [{"id": "1", "url": "http:///a", "title": "No host"}]}',
            None,
        ),
    ],
    ids=[
        "truncated-xml",
        "html-page",
        "empty",
        "no-items",
        "no-link-or-title",
        "json-no-items",
        "json-not-a-feed",
        "json-truncated",
        "oversize",
        "bad-port",
        "javascript-link",
        "no-host",
    ],
)
def test_unusable_document_is_an_ingest_error(document, message):
    with pytest.raises(IngestError, match=message):
        parse_feed(document, FEED_URL)


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("/world/story?utm_source=rss&id=3", f"{SITE}/world/story?id=3"),
        ("story.html", f"{SITE}/feeds/story.html"),
        ("//news.example.com/asia/x", f"{SITE}/asia/x"),
    ],
)
def test_relative_link_is_resolved_against_the_feed_url(link, expected):
    (item,) = parse_feed(rss(Item("Relative", link)), FEED_URL)

    assert item.url == expected


def test_script_in_title_comes_out_as_plain_words():
    (item,) = parse_feed(rss(Item("<script>alert(1)</script>Breaking: talks", f"{SITE}/a")), SITE)

    assert item.title == "Breaking: talks"


# Ingestion into the database.


@pytest.fixture
def sessions(data_dir: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{data_dir}/t.db"
    migrate(url)
    return session_factory(url)


@pytest.fixture
def session(sessions) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture
def fetcher(data_dir: Path) -> Iterator[Fetcher]:
    with Fetcher(Allowlist(), local_root=data_dir) as fetcher:
        yield fetcher


@pytest.fixture
def make_source(session, data_dir: Path) -> Callable[..., Source]:
    def make(role: SourceRole = SourceRole.LATEST, path: Path | None = None) -> Source:
        path = path or data_dir / f"{role.value}.xml"
        source = Source(url=path.as_uri(), role=role, name=role.value)
        session.add(source)
        session.commit()
        return source

    return make


@pytest.fixture
def run(session, fetcher) -> Callable[[Source, bytes], IngestResult]:
    """Publish ``document`` as the source's feed file, then ingest the source."""

    def run(source: Source, document: bytes) -> IngestResult:
        feed_path(source).write_bytes(document)
        return ingest_source(session, source, fetcher)

    return run


def feed_path(source: Source) -> Path:
    return Path(unquote(urlsplit(source.url).path))


def stories(session: Session) -> list[Story]:
    return list(session.scalars(select(Story).order_by(Story.id)))


def snapshot(sessions: sessionmaker[Session]) -> tuple[dict[int, dict[str, Any]], set[tuple]]:
    """Every story and listing row as stored, read in a fresh session (not an identity map)."""
    with sessions() as fresh:
        rows = {
            story.id: {c.key: getattr(story, c.key) for c in Story.__table__.columns}
            for story in stories(fresh)
        }
        listed = {tuple(row) for row in fresh.execute(select(Listing.__table__))}
    return rows, listed


def listings(session: Session) -> dict[tuple[int, SourceRole, str], int]:
    """(source, list, story URL) → rank."""
    rows = session.execute(
        select(Listing.source_id, Listing.role, Story.canonical_url, Listing.rank).join(Story)
    )
    return {(source_id, role, url): rank for source_id, role, url, rank in rows}


def test_first_ingest_creates_stories_and_their_listing(session, make_source, run):
    source = make_source()
    before = utcnow()

    result = run(source, rss_feed(SourceRole.LATEST, NOW).encode())

    expected = LISTS[SourceRole.LATEST]
    assert result == IngestResult(listed=len(expected), new=len(expected), updated=0)
    stored = stories(session)
    assert [s.canonical_url for s in stored] == [s.url for s in expected]
    assert [s.title for s in stored] == [s.title for s in expected]
    assert [s.summary for s in stored] == [s.summary for s in expected]
    assert {s.source_id for s in stored} == {source.id}
    assert [s.published_at for s in stored] == [
        NOW - timedelta(minutes=s.minutes_ago) for s in expected
    ]
    assert listings(session) == {
        (source.id, SourceRole.LATEST, s.url): rank for rank, s in enumerate(expected, start=1)
    }
    assert source.last_error is None
    assert source.last_fetched_at == source.last_success_at
    assert source.last_success_at is not None and source.last_success_at >= before
    assert source.next_fetch_at == source.last_success_at + timedelta(
        seconds=source.interval_seconds
    )


def test_unchanged_reingest_changes_nothing(sessions, session, make_source, run):
    source = make_source()
    document = rss_feed(SourceRole.LATEST, NOW).encode()
    run(source, document)
    before = snapshot(sessions)

    result = run(source, document)

    assert result == IngestResult(listed=len(LISTS[SourceRole.LATEST]), new=0, updated=0)
    assert snapshot(sessions) == before
    assert session.scalars(select(StoryRevision)).all() == []


@pytest.mark.parametrize(
    "again",
    [
        Item("Talks resume, updated", f"{SITE}/asia/talks", guid="g-1"),
        Item("Talks resume, updated", f"{SITE}/asia/talks?utm_source=x#more"),
        Item("Talks resume, updated", f"{SITE}/asia/talks-renamed", guid="g-1"),
    ],
    ids=["same-url", "same-canonical-url", "same-guid-new-url"],
)
def test_changed_title_updates_the_story_in_place_and_is_recorded(
    sessions, session, make_source, run, again
):
    source = make_source()
    run(source, rss(Item("Talks resume", f"{SITE}/asia/talks", "g-1")))
    ((story_id, before),) = snapshot(sessions)[0].items()

    result = run(source, rss(again))

    assert result == IngestResult(listed=1, new=0, updated=1)
    ((after_id, after),) = snapshot(sessions)[0].items()
    assert after_id == story_id
    assert after["canonical_url"] == before["canonical_url"]
    assert after["title"] == "Talks resume, updated"
    revisions = session.scalars(select(StoryRevision)).all()
    assert [(r.story_id, r.field, r.old_value, r.new_value, r.source_id) for r in revisions] == [
        (story_id, "title", "Talks resume", "Talks resume, updated", source.id)
    ]


def test_guid_reused_for_two_urls_keeps_two_stories(session, make_source, run):
    source = make_source()
    first, second = Item("First", f"{SITE}/a", "same"), Item("Second", f"{SITE}/b", "same")

    result = run(source, rss(first, second))

    assert result.new == 2
    assert [(s.canonical_url, s.title) for s in stories(session)] == [
        (first.link, "First"),
        (second.link, "Second"),
    ]

    # Read again, neither overwrites the other.
    assert run(source, rss(first, second)) == IngestResult(listed=2, new=0, updated=0)
    assert [s.title for s in stories(session)] == ["First", "Second"]


def test_each_fetch_replaces_its_own_listing(session, make_source, run):
    must_read = make_source(SourceRole.MUST_READ)
    popular = make_source(SourceRole.POPULAR)
    latest = make_source(SourceRole.LATEST)
    a, b, c, d = (Item(name.upper(), f"{SITE}/{name}", f"g-{name}") for name in "abcd")

    run(must_read, rss(a, b, c))
    run(popular, rss(c))
    assert listings(session) == {
        (must_read.id, SourceRole.MUST_READ, a.link): 1,
        (must_read.id, SourceRole.MUST_READ, b.link): 2,
        (must_read.id, SourceRole.MUST_READ, c.link): 3,
        (popular.id, SourceRole.POPULAR, c.link): 1,
    }
    assert [s.title for s in must_reads(session, utcnow(), 10)] == ["A", "B", "C"]

    run(must_read, rss(b, d))
    run(latest, rss(a, b, c, d))

    assert listings(session) == {
        (must_read.id, SourceRole.MUST_READ, b.link): 1,
        (must_read.id, SourceRole.MUST_READ, d.link): 2,
        (popular.id, SourceRole.POPULAR, c.link): 1,
        **{(latest.id, SourceRole.LATEST, i.link): n for n, i in enumerate((a, b, c, d), 1)},
    }
    assert [s.title for s in must_reads(session, utcnow(), 10)] == ["B", "D"]


def test_two_must_read_sources_keep_each_others_listings(session, data_dir, make_source, run):
    home = make_source(SourceRole.MUST_READ, data_dir / "home.xml")
    sport = make_source(SourceRole.MUST_READ, data_dir / "sport.xml")
    a, b, c = (Item(name.upper(), f"{SITE}/{name}") for name in "abc")

    run(home, rss(a, b))
    run(sport, rss(c))
    run(home, rss(b))

    assert listings(session) == {
        (home.id, SourceRole.MUST_READ, b.link): 1,
        (sport.id, SourceRole.MUST_READ, c.link): 1,
    }
    assert [s.title for s in must_reads(session, utcnow(), 10)] == ["B", "C"]


def test_pins_lead_must_reads_and_an_expired_pin_counts_for_nothing(session, make_source, run):
    source = make_source(SourceRole.MUST_READ)
    run(source, rss(*(Item(name.upper(), f"{SITE}/{name}") for name in "abc")))
    now = utcnow()
    stories(session)[2].pinned_until = now - timedelta(days=1)
    session.add(
        Story(
            canonical_url=f"{SITE}/pinned",
            title="PINNED",
            published_at=NOW,
            pinned_until=now + timedelta(days=1),
        )
    )
    session.commit()

    assert [s.title for s in must_reads(session, now, 10)] == ["PINNED", "A", "B", "C"]


def _missing(source: Source) -> None:
    feed_path(source).unlink()


def _write(document: bytes) -> Callable[[Source], None]:
    return lambda source: feed_path(source).write_bytes(document)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_missing, "cannot read"),
        (_write(b"<rss><channel><item><title>Cut off"), "link and a title"),
        (_write(b"<html><body>Maintenance</body></html>"), "add it with --kind html"),
    ],
    ids=["file-gone", "malformed", "html-page"],
)
def test_failed_ingest_is_recorded_with_backoff_and_changes_nothing(
    sessions, session, make_source, fetcher, run, breakage, message
):
    source = make_source(SourceRole.MUST_READ)
    document = rss_feed(SourceRole.MUST_READ, NOW).encode()
    run(source, document)
    before = snapshot(sessions)
    breakage(source)

    for attempt in (1, 2):
        started = utcnow()
        with pytest.raises(IngestError, match=message):
            ingest_source(session, source, fetcher)
        with sessions() as fresh:
            stored = fresh.get_one(Source, source.id)
        assert message in (stored.last_error or "")
        assert stored.error_count == attempt
        # Exponential in the failures, with ±10% jitter.
        delay = timedelta(seconds=stored.interval_seconds) * 2**attempt
        assert started + delay * 0.9 <= stored.next_fetch_at <= utcnow() + delay * 1.1

    assert snapshot(sessions) == before

    run(source, document)
    assert (source.last_error, source.error_count) == (None, 0)


@pytest.mark.parametrize("where", ["beside", "dot-dot", "symlink"])
def test_local_file_outside_the_data_dir_is_refused(session, data_dir, fetcher, make_source, where):
    outside = data_dir.parent / "outside.xml"
    outside.write_bytes(rss(Item("Secret", f"{SITE}/secret")))
    path = {
        "beside": outside,
        "dot-dot": data_dir / ".." / "outside.xml",
        "symlink": data_dir / "link.xml",
    }[where]
    if where == "symlink":
        path.symlink_to(outside)
    source = make_source(path=path)

    with pytest.raises(IngestError, match="only from inside DIGEST_DATA_DIR"):
        ingest_source(session, source, fetcher)

    assert "only from inside DIGEST_DATA_DIR" in (source.last_error or "")
    assert stories(session) == []


def test_due_sources_are_claimed_once(session, make_source):
    now = utcnow()
    never, overdue, later = (make_source(role) for role in SourceRole)
    overdue.next_fetch_at = now - timedelta(minutes=1)
    later.next_fetch_at = now + timedelta(minutes=1)
    session.commit()

    assert claim_due_sources(session, now) == sorted([never.id, overdue.id])
    assert claim_due_sources(session, now) == []
    # A claim whose ingest never ran (a lost task) expires, and the source is due again.
    assert claim_due_sources(session, now + CLAIM_LEASE) == [never.id, overdue.id, later.id]
