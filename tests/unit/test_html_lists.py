"""Reading a news site's HTML: the story lists of a section page, the metadata of a story page."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from digest.html_lists import ListedLink, PageMetadata, Selectors, page_metadata, parse_lists
from digest.models import SourceRole
from digest.sample_site import LISTS, SITE, article_page, story_page

NUMBERED = {SourceRole.MUST_READ, SourceRole.POPULAR}


def test_sample_article_page_lists():
    links = parse_lists(article_page())

    # The lead story heads the page; its followers make the Latest list. "You May Also Like"
    # is no list of ours, and the second "Popular Now" repeats the first.
    expected = {**LISTS, SourceRole.LATEST: LISTS[SourceRole.LATEST][1:]}
    assert links == [
        ListedLink(
            role,
            rank,
            story.url.removeprefix(SITE),
            story.title,
            story.section if role in NUMBERED else "",
        )
        for role in (SourceRole.LATEST, SourceRole.POPULAR, SourceRole.MUST_READ)
        for rank, story in enumerate(expected[role], start=1)
    ]
    assert links[0].title.startswith("707 Unit Commander Confesses")


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("1 Seoul talks resume", "Seoul talks resume"),
        ("1. Seoul talks resume", "Seoul talks resume"),
        ("1) Seoul talks resume", "Seoul talks resume"),
        ("2 Seoul talks resume", "2 Seoul talks resume"),
        ("707 Unit Commander Confesses", "707 Unit Commander Confesses"),
        ("2024 in review", "2024 in review"),
    ],
)
def test_a_leading_number_is_dropped_only_when_it_is_the_rank(text, title):
    html = f'<h2>Popular Now</h2><ol><li><a href="/a">{text}</a></li></ol>'

    assert [link.title for link in parse_lists(html)] == [title]


def test_custom_selectors_from_config():
    html = """
    <div id="picks">
      <p class="item"><a href="/a"><b class="hed">Seoul talks resume</b> read more</a>
        <em class="sec">ASIA</em></p>
      <p class="item"><a href="/b"><b class="hed">Markets rally</b> read more</a></p>
    </div>
    <div id="top"><p class="item"><a href="/c"><b class="hed">Cup final</b></a></p></div>
    <h2>Latest Stories</h2><ul><li><a href="/d">Not read: selectors replace headings</a></li></ul>
    """
    selectors = Selectors.from_config(
        {
            "lists": {"must_read": "#picks", "popular": "#top"},
            "item": "p.item",
            "title": ".hed",
            "section": ".sec",
        }
    )

    assert parse_lists(html, selectors) == [
        ListedLink(SourceRole.MUST_READ, 1, "/a", "Seoul talks resume", "ASIA"),
        ListedLink(SourceRole.MUST_READ, 2, "/b", "Markets rally", ""),
        ListedLink(SourceRole.POPULAR, 1, "/c", "Cup final", ""),
    ]


@pytest.mark.parametrize("config", [None, {}])
def test_no_selectors_config_means_the_defaults(config):
    assert Selectors.from_config(config) == Selectors()


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("", []),
        ("<p>No lists here</p>", []),
        ("\x00\x01<<<>>> </ul></li><li>", []),
        ('<h2>Latest Stories</h2><ul><li><a href="">Empty link</a><li><a>No href</a></ul>', []),
        (
            '<div><h3>Must-Reads</h3><ol><li><a href="/a">Unclosed<li><a href="/b">tags',
            [("/a", "Unclosed"), ("/b", "tags")],
        ),
        (
            '<h2>Latest Stories</h2><ul><li><a href="/a">'
            "<script>alert(1)</script>Breaking <b>talks</b><style>a{color:red}</style>"
            "</a></li></ul>",
            [("/a", "Breaking talks")],
        ),
        (
            '<h2>Latest Stories</h2><ul><li><a href="/a"><img src=x onerror=alert(1)></a>'
            '</li><li><a href="/b">  Spread \n\t out  </a></li></ul>',
            [("/b", "Spread out")],
        ),
    ],
    ids=["empty", "no-lists", "garbage", "no-usable-links", "unclosed", "script", "no-words"],
)
def test_odd_or_hostile_html(html, expected):
    assert [(link.href, link.title) for link in parse_lists(html)] == expected


def test_a_headline_that_sounds_like_a_heading_does_not_relabel_the_next_list():
    html = """
    <h2>Must-Reads</h2>
    <ul><li><a href="/a"><span class="title">The latest on the talks</span></a></li></ul>
    <h2>Popular Now</h2>
    <ul><li><a href="/b"><span class="title">Cup final</span></a></li></ul>
    """

    assert [(link.role, link.href) for link in parse_lists(html)] == [
        (SourceRole.MUST_READ, "/a"),
        (SourceRole.POPULAR, "/b"),
    ]


# Story pages.

PUBLISHED = datetime(2024, 12, 10, 9, 30, tzinfo=UTC)
STORY = LISTS[SourceRole.LATEST][1]


def test_sample_story_page_metadata():
    assert page_metadata(story_page(STORY, PUBLISHED)) == PageMetadata(
        canonical=STORY.url,
        title=STORY.title,
        description=STORY.summary,
        image=f"{SITE}/images/{STORY.slug}.jpg",
        section="Politics",
        author="Daniel Kim",
        published_at=PUBLISHED,
    )


OG_ONLY = """<html><head>
<meta property="og:title" content="OG headline">
<meta name="description" content="Plain description">
<meta property="og:image" content="/img/a.jpg">
<meta property="article:section" content="World">
<meta name="author" content="Lee Ji-woo">
<meta property="article:published_time" content="2024-12-10T18:30:00+09:00">
</head><body></body></html>"""
FROM_OG = PageMetadata(
    canonical=None,
    title="OG headline",
    description="Plain description",
    image="/img/a.jpg",
    section="World",
    author="Lee Ji-woo",
    published_at=PUBLISHED,
)


def _with_json_ld(document: object | str) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    return OG_ONLY.replace("</head>", f'<script type="application/ld+json">{text}</script></head>')


ARTICLE = {
    "@type": "NewsArticle",
    "headline": "LD headline",
    "image": {"@type": "ImageObject", "url": "https://cdn.example.com/ld.jpg"},
    "author": {"@type": "Person", "name": "Park Min"},
    "datePublished": "2024-12-10T10:00:00Z",
}
FROM_LD = PageMetadata(
    canonical=None,
    title="LD headline",
    description="Plain description",
    image="https://cdn.example.com/ld.jpg",
    section="World",
    author="Park Min",
    published_at=datetime(2024, 12, 10, 10, 0, tzinfo=UTC),
)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (OG_ONLY, FROM_OG),
        (_with_json_ld(ARTICLE), FROM_LD),
        (
            _with_json_ld(
                {"@context": "https://schema.org", "@graph": [{"@type": "WebPage"}, ARTICLE]}
            ),
            FROM_LD,
        ),
        (_with_json_ld([{"@type": "Organization", "name": "Example"}, ARTICLE]), FROM_LD),
        (_with_json_ld({**ARTICLE, "@type": ["Thing", "ReportageNewsArticle"]}), FROM_LD),
        (_with_json_ld('{"@type": "NewsArticle", "headline": "cut off'), FROM_OG),
        (_with_json_ld({**ARTICLE, "@type": "Recipe"}), FROM_OG),
        (_with_json_ld({**ARTICLE, "@type": {"odd": "type"}}), FROM_OG),
        (_with_json_ld({**ARTICLE, "@type": [{"odd": "type"}]}), FROM_OG),
        (
            _with_json_ld({"@type": "NewsArticle", "headline": 7, "image": [], "author": [3]}),
            FROM_OG,
        ),
        (_with_json_ld("null"), FROM_OG),
    ],
    ids=[
        "og-only",
        "json-ld-wins",
        "json-ld-in-graph",
        "json-ld-list",
        "json-ld-type-list",
        "broken-json-ld",
        "not-an-article",
        "type-is-an-object",
        "type-list-of-objects",
        "wrong-value-types",
        "json-null",
    ],
)
def test_page_metadata(html, expected):
    assert page_metadata(html) == expected


@pytest.mark.parametrize("html", ["", "plain text", "<html><head><link rel=canonical></head>"])
def test_page_without_metadata(html):
    assert page_metadata(html) == PageMetadata()
