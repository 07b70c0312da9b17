"""Feed parsing and story ingestion: canonical URLs, hostile markup, bad feeds, upserts, ranks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest import ingest
from digest.db import migrate, session_factory
from digest.ingest import IngestError, canonical_url, ingest_source, parse_feed, plain_text
from digest.models import Source, SourceRole, Story
from digest.sample_site import LISTS, SITE, rss_feed

NOW = datetime(2024, 12, 10, 9, 30, tzinfo=UTC)
FEED_URL = f"{SITE}/feeds/latest.xml"


@dataclass(frozen=True)
class Item:
    title: str
    link: str
    guid: str | None = None
    category: str = ""


def rss(*items: Item) -> bytes:
    body = "".join(
        "<item>"
        f"<title>{escape(item.title)}</title><link>{escape(item.link)}</link>"
        + (f'<guid isPermaLink="false">{escape(item.guid)}</guid>' if item.guid else "")
        + (f"<category>{escape(item.category)}</category>" if item.category else "")
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


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Cut', "not a usable feed"),
        (b"<!DOCTYPE html><html><body><h1>Not found</h1></body></html>", "not a usable feed"),
        (b"", "not a usable feed"),
        (b'<rss version="2.0"><channel><title>Empty</title></channel></rss>', "no items"),
        (rss(Item("", f"{SITE}/a"), Item("No link", "")), "none with both a link and a title"),
        # Skipped or refused, either way an IngestError: ingest_source records nothing else.
        (rss(Item("Bad port", "http://news.example.com:99999/a")), None),
    ],
    ids=["truncated-xml", "html-page", "empty", "no-items", "no-link-or-title", "bad-port"],
)
def test_unusable_document_is_an_ingest_error(document, message):
    with pytest.raises(IngestError, match=message):
        parse_feed(document, FEED_URL)


def test_oversize_document_is_an_ingest_error(monkeypatch):
    document = rss(Item("Big", f"{SITE}/big"))
    monkeypatch.setattr(ingest, "MAX_FEED_BYTES", len(document) - 1)

    with pytest.raises(IngestError, match="limit"):
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
def sessions(tmp_path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path}/t.db"
    migrate(url)
    return session_factory(url)


@pytest.fixture
def session(sessions) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture
def make_source(session) -> Callable[..., Source]:
    def make(role: SourceRole = SourceRole.LATEST, url: str = FEED_URL) -> Source:
        source = Source(url=url, role=role, name=role.value)
        session.add(source)
        session.commit()
        return source

    return make


def serve(document: bytes) -> Callable[[str], bytes]:
    return lambda url: document


def stories(session: Session) -> list[Story]:
    return list(session.scalars(select(Story).order_by(Story.id)))


def snapshot(sessions: sessionmaker[Session]) -> dict[int, dict[str, Any]]:
    """Every story row as stored, read in a fresh session (not from an identity map)."""
    with sessions() as fresh:
        return {
            story.id: {c.key: getattr(story, c.key) for c in Story.__table__.columns}
            for story in stories(fresh)
        }


def test_first_ingest_creates_stories(session, make_source):
    source = make_source()

    listed = ingest_source(session, source, read=serve(rss_feed(SourceRole.LATEST, NOW).encode()))

    expected = LISTS[SourceRole.LATEST]
    assert listed == len(expected)
    stored = stories(session)
    assert [s.canonical_url for s in stored] == [s.url for s in expected]
    assert [s.title for s in stored] == [s.title for s in expected]
    assert {s.source_id for s in stored} == {source.id}
    assert [s.published_at for s in stored] == [
        NOW - timedelta(minutes=s.minutes_ago) for s in expected
    ]
    assert source.last_fetched_at is not None
    assert source.last_error is None


@pytest.mark.parametrize(
    "again",
    [
        Item("Talks resume, updated", f"{SITE}/asia/talks", guid="g-1"),
        Item("Talks resume, updated", f"{SITE}/asia/talks?utm_source=x#more"),
        Item("Talks resume, updated", f"{SITE}/asia/talks-renamed", guid="g-1"),
    ],
    ids=["same-url", "same-canonical-url", "same-guid-new-url"],
)
def test_reingest_updates_the_story_in_place(sessions, session, make_source, again):
    source = make_source()
    ingest_source(
        session, source, read=serve(rss(Item("Talks resume", f"{SITE}/asia/talks", "g-1")))
    )
    (before,) = snapshot(sessions).values()

    ingest_source(session, source, read=serve(rss(again)))

    (after,) = snapshot(sessions).values()
    assert after["id"] == before["id"]
    assert after["title"] == "Talks resume, updated"


def _ranks(session: Session) -> dict[str, tuple[int | None, int | None]]:
    session.expire_all()
    return {s.canonical_url: (s.must_read_rank, s.popular_rank) for s in stories(session)}


def test_ranked_list_replaces_the_previous_one(session, make_source):
    must_read = make_source(SourceRole.MUST_READ, f"{SITE}/feeds/must-read.xml")
    popular = make_source(SourceRole.POPULAR, f"{SITE}/feeds/popular.xml")
    latest = make_source(SourceRole.LATEST)
    a, b, c, d = (Item(name.upper(), f"{SITE}/{name}", f"g-{name}") for name in "abcd")

    ingest_source(session, must_read, read=serve(rss(a, b, c)))
    ingest_source(session, popular, read=serve(rss(c)))
    assert _ranks(session) == {a.link: (1, None), b.link: (2, None), c.link: (3, 1)}

    ingest_source(session, must_read, read=serve(rss(b, d)))
    ingest_source(session, latest, read=serve(rss(a, b, c, d)))

    assert _ranks(session) == {
        a.link: (None, None),
        b.link: (1, None),
        c.link: (None, 1),
        d.link: (2, None),
    }


def _refuse(url: str) -> bytes:
    raise IngestError(f"{url}: connection refused")


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (_refuse, "connection refused"),
        (serve(b"<rss><channel><item><title>Cut off"), "link and a title"),
        (serve(b"<html><body>Maintenance</body></html>"), "not a usable feed"),
    ],
    ids=["read-fails", "malformed", "html"],
)
def test_failed_read_is_recorded_and_changes_no_story(
    sessions, session, make_source, read, message
):
    source = make_source(SourceRole.MUST_READ)
    ingest_source(session, source, read=serve(rss_feed(SourceRole.MUST_READ, NOW).encode()))
    before = snapshot(sessions)

    for attempt in (1, 2):
        with pytest.raises(IngestError, match=message):
            ingest_source(session, source, read=read)
        with sessions() as fresh:
            stored = fresh.get_one(Source, source.id)
            assert message in (stored.last_error or "")
            assert stored.error_count == attempt

    assert snapshot(sessions) == before

    ingest_source(session, source, read=serve(rss_feed(SourceRole.MUST_READ, NOW).encode()))
    assert (source.last_error, source.error_count) == (None, 0)
