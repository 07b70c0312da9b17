"""Fetching from a real HTTP server: the SSRF guard, redirects, caps on size and time,
conditional GET, and HTML section pages whose stories are filled in from their own pages.

Loopback is refused like any other non-public address, so every test that fetches from the local
server allow-lists it explicitly; that the guard needs this is itself under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest import __version__
from digest.db import migrate, session_factory
from digest.fetch import MAX_REDIRECTS, Allowlist, Fetcher, FetchError
from digest.ingest import IngestError, ingest_source
from digest.models import Listing, Source, SourceRole, Story, utcnow
from digest.sample_site import LISTS, SITE, article_page, rss_feed, story_page
from digest.selection import must_reads
from tests.support import Page, redirect

LOOPBACK = Allowlist.parse("127.0.0.1")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
FEED = Page(
    rss_feed(SourceRole.LATEST, datetime(2024, 12, 10, 9, 30, tzinfo=UTC)).encode(),
    headers={"Content-Type": "application/rss+xml"},
)


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(LOOPBACK) as fetcher:
        yield fetcher


@pytest.fixture
def session(data_dir: Path) -> Iterator[Session]:
    url = f"sqlite:///{data_dir}/t.db"
    migrate(url)
    with session_factory(url)() as session:
        yield session


@pytest.fixture
def add_source(session) -> Callable[..., Source]:
    def add(url: str, kind: str = "rss") -> Source:
        source = Source(url=url, kind=kind)
        session.add(source)
        session.commit()
        return source

    return add


def snapshot(session: Session) -> tuple[list[tuple], list[tuple]]:
    session.expire_all()
    stories = [tuple(row) for row in session.execute(select(Story.__table__).order_by(Story.id))]
    listed = [tuple(row) for row in session.execute(select(Listing.__table__).order_by("rank"))]
    return stories, listed


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        ("", f"NewsroomDigest/{__version__}"),
        (
            "https://digest.example.com",
            f"NewsroomDigest/{__version__} (+https://digest.example.com)",
        ),
    ],
)
def test_user_agent_names_the_product(local_site, contact, expected):
    local_site.pages["/feed.xml"] = FEED

    with Fetcher(LOOPBACK, contact_url=contact) as fetcher:
        fetched = fetcher.get(local_site.url("/feed.xml"))

    assert fetched.body == FEED.body
    assert fetched.content_type == "application/rss+xml"
    (request,) = local_site.requests
    assert request.headers["User-Agent"] == expected


@pytest.mark.parametrize(
    ("validator", "request_header"),
    [
        ({"ETag": '"v1"'}, "If-None-Match"),
        ({"Last-Modified": "Tue, 10 Dec 2024 09:30:00 GMT"}, "If-Modified-Since"),
    ],
    ids=["etag", "last-modified"],
)
def test_unchanged_feed_is_not_modified_and_changes_nothing(
    local_site, fetcher, session, add_source, validator, request_header
):
    local_site.pages["/feed.xml"] = Page(FEED.body, headers=validator)
    source = add_source(local_site.url("/feed.xml"))
    assert ingest_source(session, source, fetcher).new == len(LISTS[SourceRole.LATEST])
    before = snapshot(session)

    result = ingest_source(session, source, fetcher)

    assert result.not_modified
    assert result.new == result.updated == 0
    assert snapshot(session) == before
    first, second = local_site.requests
    assert request_header not in first.headers
    assert second.headers[request_header] == next(iter(validator.values()))
    assert source.last_error is None


@pytest.mark.parametrize("hops", [1, MAX_REDIRECTS])
def test_redirects_are_followed(local_site, fetcher, hops):
    for hop in range(hops):
        local_site.pages[f"/hop/{hop}"] = redirect(f"/hop/{hop + 1}", REDIRECT_STATUSES[hop % 5])
    local_site.pages[f"/hop/{hops}"] = FEED

    fetched = fetcher.get(local_site.url("/hop/0"))

    assert fetched.body == FEED.body
    # Relative links in the document resolve against where it was found, not where we asked.
    assert fetched.url == local_site.url(f"/hop/{hops}")


def test_too_many_redirects_is_an_error(local_site, fetcher):
    for hop in range(MAX_REDIRECTS + 1):
        local_site.pages[f"/hop/{hop}"] = redirect(f"/hop/{hop + 1}")
    local_site.pages[f"/hop/{MAX_REDIRECTS + 1}"] = FEED

    with pytest.raises(FetchError, match=f"more than {MAX_REDIRECTS} redirects"):
        fetcher.get(local_site.url("/hop/0"))

    assert f"/hop/{MAX_REDIRECTS + 1}" not in local_site.paths()


@pytest.mark.parametrize(
    ("target_host", "refused"),
    [("localhost", False), ("127.0.0.2", True)],
)
def test_every_redirect_hop_is_checked_against_the_allowlist(local_site, target_host, refused):
    local_site.pages["/feed.xml"] = FEED
    local_site.pages["/moved"] = redirect(local_site.url("/feed.xml", host=target_host))

    with Fetcher(Allowlist.parse("localhost")) as fetcher:
        if refused:
            with pytest.raises(FetchError, match=rf"refused to connect to {target_host}"):
                fetcher.get(local_site.url("/moved", host="localhost"))
        else:
            assert fetcher.get(local_site.url("/moved", host="localhost")).body == FEED.body

    assert local_site.paths() == (["/moved"] if refused else ["/moved", "/feed.xml"])


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.0.0.1", "169.254.169.254", "localhost"])
def test_non_public_address_is_refused_unless_allow_listed(local_site, host):
    local_site.pages["/feed.xml"] = FEED

    with Fetcher(Allowlist()) as fetcher, pytest.raises(FetchError) as refused:
        fetcher.get(local_site.url("/feed.xml", host=host))

    assert "not a public address" in str(refused.value)
    assert "DIGEST_FETCH_ALLOWLIST" in str(refused.value)
    assert local_site.requests == []


@pytest.mark.parametrize(
    ("allowlist", "host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.0/8, 127.0.0.0/8", "127.0.0.1"),
        ("LocalHost.", "localhost"),
    ],
)
def test_allow_listed_host_or_network_is_fetched(local_site, allowlist, host):
    local_site.pages["/feed.xml"] = FEED

    with Fetcher(Allowlist.parse(allowlist)) as fetcher:
        assert fetcher.get(local_site.url("/feed.xml", host=host)).body == FEED.body


@pytest.mark.parametrize(("size", "fits"), [(1000, True), (1001, False)])
def test_body_over_the_size_cap_is_an_error(local_site, size, fits):
    local_site.pages["/big.xml"] = Page(b"x" * size)

    with Fetcher(LOOPBACK, max_bytes=1000) as fetcher:
        if fits:
            assert len(fetcher.get(local_site.url("/big.xml")).body or b"") == size
        else:
            with pytest.raises(FetchError, match="larger than 1000 bytes"):
                fetcher.get(local_site.url("/big.xml"))


@pytest.mark.parametrize(
    "page",
    [Page(FEED.body, delay=30), Page(FEED.body, drip=0.05)],
    ids=["stalls-before-answering", "trickles-the-body"],
)
def test_server_slower_than_the_timeout_is_an_error(local_site, page):
    local_site.pages["/slow.xml"] = page
    started = time.monotonic()

    with Fetcher(LOOPBACK, timeout=0.5) as fetcher, pytest.raises(FetchError):
        fetcher.get(local_site.url("/slow.xml"))

    assert time.monotonic() - started < 3


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_is_recorded_on_the_source(local_site, fetcher, session, add_source, status):
    local_site.pages["/feed.xml"] = Page(b"oops", status)
    source = add_source(local_site.url("/feed.xml"))

    with pytest.raises(IngestError, match=f"HTTP {status}"):
        ingest_source(session, source, fetcher)

    session.expire_all()
    assert f"answered HTTP {status}" in (source.last_error or "")
    assert source.error_count == 1
    assert source.next_fetch_at is not None and source.next_fetch_at > utcnow()
    assert snapshot(session) == ([], [])


# HTML section pages, with story pages that fill in what the lists lack.

# What the sample article page lists: the lead story's followers as Latest, then Popular Now
# (shown twice), Must-Reads, and "You May Also Like", which is no list of ours.
ON_PAGE = {**LISTS, SourceRole.LATEST: LISTS[SourceRole.LATEST][1:]}
PAGE_STORIES = list(dict.fromkeys(s for stories in ON_PAGE.values() for s in stories))


def _path(url: str) -> str:
    return url.removeprefix(SITE)


def test_html_section_page_gives_listings_and_stories_filled_from_their_pages(
    local_site, fetcher, session, add_source
):
    now = utcnow().replace(microsecond=0)
    published = {s.slug: now - timedelta(minutes=s.minutes_ago) for s in PAGE_STORIES}
    local_site.pages["/"] = Page(article_page().encode())
    for story in PAGE_STORIES:
        local_site.pages[_path(story.url)] = Page(story_page(story, published[story.slug]).encode())
    source = add_source(local_site.url("/"), kind="html")

    result = ingest_source(session, source, fetcher)

    assert result.new == len(PAGE_STORIES)
    stored = {s.canonical_url: s for s in session.scalars(select(Story))}
    for story in PAGE_STORIES:
        row = stored[local_site.url(_path(story.url))]
        assert row.title == story.title
        assert row.summary == story.summary
        assert row.section == story.section
        assert row.author == "Daniel Kim"
        assert row.image_url == f"{SITE}/images/{story.slug}.jpg"
        assert row.published_at == published[story.slug]
    listed = session.execute(
        select(Listing.role, Listing.rank, Story.canonical_url).join(Story).order_by("rank")
    )
    by_role: dict[SourceRole, list[str]] = {}
    for role, _rank, url in listed:
        by_role.setdefault(role, []).append(url)
    assert by_role == {
        role: [local_site.url(_path(s.url)) for s in stories] for role, stories in ON_PAGE.items()
    }
    assert [s.title for s in must_reads(session, utcnow(), 10)] == [
        s.title for s in LISTS[SourceRole.MUST_READ]
    ]


def _section_page(href: str) -> bytes:
    return f'<h2>Latest Stories</h2><ul><li><a href="{href}">Seoul talks</a></li></ul>'.encode()


@pytest.mark.parametrize(
    ("canonical", "stored_path"),
    [
        ("/asia/seoul-talks", "/asia/seoul-talks"),
        ("{base}/asia/seoul-talks?utm_source=x", "/asia/seoul-talks"),
        # A page may not re-key itself onto another site.
        ("https://elsewhere.example.org/asia/seoul-talks", "/s/1?from=home"),
    ],
    ids=["relative", "absolute", "other-site"],
)
def test_story_page_canonical_link_gives_the_story_its_url(
    local_site, fetcher, session, add_source, canonical, stored_path
):
    local_site.pages["/"] = Page(_section_page("/s/1?from=home"))
    local_site.pages["/s/1"] = Page(
        f'<link rel="canonical" href="{canonical.format(base=local_site.url(""))}">'
        '<meta property="og:description" content="Negotiators meet again.">'.encode()
    )
    source = add_source(local_site.url("/"), kind="html")

    ingest_source(session, source, fetcher)

    (story,) = session.scalars(select(Story))
    assert story.canonical_url == local_site.url(stored_path)
    assert story.summary == "Negotiators meet again."


@pytest.mark.parametrize(
    "page",
    [
        Page(b"gone", 404),
        Page(b"broken", 500),
        Page(b"\x00\xff binary \xfe"),
        Page(
            b'<script type="application/ld+json">'
            + json.dumps({"@type": {"odd": True}, "headline": "?"}).encode()
            + b"</script>"
        ),
    ],
    ids=["404", "500", "not-html", "odd-json-ld"],
)
def test_story_page_that_cannot_be_read_leaves_the_story_stored_without_it(
    local_site, fetcher, session, add_source, page
):
    local_site.pages["/"] = Page(_section_page("/asia/seoul-talks"))
    local_site.pages["/asia/seoul-talks"] = page
    source = add_source(local_site.url("/"), kind="html")
    before = utcnow()

    result = ingest_source(session, source, fetcher)

    assert result.new == 1
    (story,) = session.scalars(select(Story))
    assert (story.canonical_url, story.title) == (
        local_site.url("/asia/seoul-talks"),
        "Seoul talks",
    )
    assert (story.summary, story.image_url, story.section, story.author) == ("", None, "", "")
    assert before <= story.published_at <= utcnow()
    assert source.last_error is None
