"""Fuzzing the parsers: whatever a source sends, parsing either yields clean items or raises
IngestError (which ingestion records on the source), never anything else."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from digest.feeds import FeedItem, IngestError, canonical_url, parse_feed
from digest.html_lists import page_metadata, parse_lists

FEED_URL = "https://news.example.com/feeds/latest.xml"
# Derandomized so that a run is repeatable; modest counts keep the whole file to seconds.
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
COMPLETE_TAG = re.compile(r"<\s*/?\s*[a-zA-Z!?][^>]*>")

words = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="<>&()"),
    max_size=20,
)
markup = st.sampled_from(
    [
        "<b>",
        "</b>",
        "<script>alert(1)</script>",
        "<script>document.write('<p>x</p>')</script>",
        "<style>p { color: red }</style>",
        "<img src=x onerror=alert(1)>",
        "<a href='javascript:alert(1)'>",
        "</a>",
        "<!-- alert(1) -->",
        "<svg onload=alert(1)>",
        "<iframe src=//evil.example/>",
        "<br/>",
        "<p class='kicker'>",
        "&amp;",
        "&nbsp;",
        "&#8217;",
        "&quot;",
    ]
)
hostile_title = st.lists(st.one_of(words, markup), max_size=8).map("".join)
hostile_link = st.one_of(
    st.sampled_from(
        [
            "https://news.example.com/asia/talks",
            "HTTP://News.Example.COM:80/a?utm_source=x&id=1&fbclid=y#top",
            "/relative/path?utm_medium=feed",
            "story.html",
            "//cdn.example.net/x",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "mailto:desk@news.example.com",
            "ftp://news.example.com/a",
            "http://[::1",
            "http://news.example.com:99999/a",
            "http:///no-host",
            "https:///no-host",
            "https://news.example.com/ä ö?q=ü",
            "",
            "   ",
        ]
    ),
    st.text(max_size=40),
)


def check(items: list[FeedItem]) -> None:
    for item in items:
        parts = urlsplit(item.url)
        assert parts.scheme in ("http", "https"), item.url
        assert parts.hostname, item.url
        assert canonical_url(item.url) == item.url
        assert item.title and item.title == item.title.strip()
        assert not COMPLETE_TAG.search(item.title), item.title
        assert item.image_url is None or urlsplit(item.image_url).scheme in ("http", "https")


def parse_or_refuse(document: bytes) -> list[FeedItem]:
    try:
        items = parse_feed(document, FEED_URL)
    except IngestError:
        return []
    check(items)
    return items


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\xef\xbb\xbf{")
@example(b"<?xml version='1.0' encoding='bogus'?><rss><channel><item>")
def test_arbitrary_bytes(document):
    parse_or_refuse(document)


entries = st.lists(
    st.tuples(hostile_title, hostile_link, st.one_of(st.none(), words), hostile_link),
    min_size=1,
    max_size=4,
)


def rss(entries: list[tuple[str, str, str | None, str]]) -> bytes:
    items = "".join(
        f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
        + (f"<guid>{escape(guid)}</guid>" if guid is not None else "")
        + f"<enclosure url={quoteattr(image)} type='image/jpeg'/>"
        + f"<description><![CDATA[{title}]]></description></item>"
        for title, link, guid, image in entries
    )
    return f'<rss version="2.0"><channel><title>x</title>{items}</channel></rss>'.encode()


def atom(entries: list[tuple[str, str, str | None, str]]) -> bytes:
    items = "".join(
        f"<entry><title type='html'>{escape(title)}</title><link href={quoteattr(link)}/>"
        + (f"<id>{escape(guid)}</id>" if guid is not None else "")
        + f"<summary type='html'>{escape(title)}</summary></entry>"
        for title, link, guid, _image in entries
    )
    return f'<feed xmlns="http://www.w3.org/2005/Atom"><title>x</title>{items}</feed>'.encode()


def json_feed(entries: list[tuple[str, str, str | None, str]]) -> bytes:
    items = [
        {"id": guid, "url": link, "title": title, "content_html": title, "image": image}
        for title, link, guid, image in entries
    ]
    return json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": items}).encode()


@FUZZ
@given(st.sampled_from([rss, atom, json_feed]), entries)
@example(json_feed, [("Talks", "https://news.example.com/a", None, "http://[::1")])
@example(rss, [("Talks", "http:///no-host", None, "")])
def test_generated_feeds_with_hostile_titles_and_links(build, entries):
    for item in parse_or_refuse(build(entries)):
        # Words never hold parentheses here: only script, attributes or comments could.
        assert "alert(" not in item.title, item.title


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
json_item_keys = st.sampled_from(
    ["id", "url", "external_url", "title", "summary", "content_text", "date_published",
     "date_modified", "tags", "authors", "author", "image", "banner_image"]
)  # fmt: skip


@FUZZ
@given(
    st.one_of(
        st.lists(st.dictionaries(json_item_keys, json_values | hostile_link), max_size=3),
        json_values,
    )
)
def test_json_feed_with_values_of_any_type(items):
    parse_or_refuse(
        json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": items}).encode()
    )


html_fragments = st.one_of(
    st.text(max_size=30),
    markup,
    st.sampled_from(["<h2>Latest Stories</h2>", "<h3>Must-Reads", "<ul>", "<li>", "</ol>"]),
    hostile_link.map(lambda link: f"<a href={quoteattr(link)}>"),
    json_values.map(
        lambda value: f'<script type="application/ld+json">{json.dumps(value)}</script>'
    ),
    json_values.map(
        lambda value: (
            '<script type="application/ld+json">'
            + json.dumps({"@type": value, "headline": value, "image": value, "author": value})
            + "</script>"
        )
    ),
    st.sampled_from(["og:title", "og:image", "article:published_time"]).flatmap(
        lambda name: st.text(max_size=20).map(
            lambda content: f"<meta property={quoteattr(name)} content={quoteattr(content)}>"
        )
    ),
)


@FUZZ
@given(st.one_of(st.text(max_size=500), st.lists(html_fragments, max_size=12).map("".join)))
def test_html_readers_never_raise(html):
    for link in parse_lists(html):
        assert link.rank >= 1 and link.href and link.title
    metadata = page_metadata(html)
    assert metadata.published_at is None or metadata.published_at.tzinfo is not None
