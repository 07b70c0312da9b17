"""Link-preview crawlers get the story's card from ``/c/{token}``, people get the redirect,
over real HTTP (uvicorn) and a real database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.db import session_factory
from digest.models import Click, ClickKind, Edition, Link, Newsletter, Story, utcnow
from digest.social.compose import excerpt
from digest.tokens import TokenSigner
from digest.tracking import with_utm
from digest.web.link_previews import LinkPreviews
from tests.support import settled_count

HOSTILE = '<script>"&'
TWITTER = "Twitterbot/1.0"
MASTODON = "http.rb/5.1.1 (Mastodon/4.2.10; +https://mastodon.social/)"
FACEBOOK = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


class _Head(HTMLParser):
    """The page's meta and link tags as a crawler reads them (attribute values unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.anchors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta" and "content" in a:
            key = a.get("property") or a.get("name") or a.get("http-equiv") or ""
            assert key not in self.meta, f"{key} twice"
            self.meta[key] = a["content"] or ""
        elif tag == "link":
            self.links[a["rel"] or ""] = a["href"] or ""
        elif tag == "a":
            self.anchors.append(a["href"] or "")


def _head(body: str) -> _Head:
    parser = _Head()
    parser.feed(body)
    return parser


@dataclass
class Site:
    base: str
    sessions: sessionmaker[Session]
    signer: TokenSigner
    story: Story
    edition_link: Link  # a story link in a newsletter's edition, with an image
    social_link: Link  # a story link of no newsletter, without an image
    bare_link: Link  # no story

    def url(self, link: Link) -> str:
        return f"{self.base}/c/{self.signer.click_token(link.id, None)}"


def _story(n: int, image: str | None) -> Story:
    return Story(
        canonical_url=f"https://news.example/2024/story-{n}?id={n}&view=full",
        title=f"{HOSTILE} story {n}",
        summary=f"Said {HOSTILE} today. " + "A sentence that goes on. " * 30,
        image_url=image,
        published_at=utcnow(),
    )


@pytest.fixture
def site(sqlite_settings: Settings, web_server) -> Site:
    sessions = session_factory(sqlite_settings.database_url)
    with sessions.begin() as session:
        newsletter = Newsletter(slug="daily", name=f"The {HOSTILE} Daily")
        session.add(newsletter)
        session.flush()
        edition = Edition(
            newsletter_id=newsletter.id, issue_date=date.today(), subject="s", content={}
        )
        story = _story(1, "https://news.example/img/1.jpg?w=1200&h=630")
        plain = _story(2, None)
        session.add_all([edition, story, plain])
        session.flush()
        links = [
            Link(
                edition_id=edition.id,
                story_id=story.id,
                url=with_utm(story.canonical_url, "newsletter", "email", "daily"),
            ),
            Link(story_id=plain.id, url=with_utm(plain.canonical_url, "mastodon", "social", "x")),
            Link(url="https://elsewhere.example/page?a=1&b=2"),
        ]
        session.add_all(links)
        session.flush()
        session.expunge_all()
    return Site(
        web_server(sqlite_settings),
        sessions,
        TokenSigner(sqlite_settings.secret_keys),
        story,
        *links,
    )


def _clicks(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Click)) or 0


@pytest.mark.parametrize("agent", [TWITTER, MASTODON, FACEBOOK])
def test_crawlers_get_the_story_card_escaped(site: Site, agent: str) -> None:
    response = httpx.get(site.url(site.edition_link), headers={"User-Agent": agent})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store, max-age=0"
    # Escaped in the markup, and whole again once a crawler reads the attributes.
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text
    page = _head(response.text)
    story, target = site.story, site.edition_link.url
    assert page.meta["og:type"] == "article"
    assert page.meta["og:title"] == story.title
    assert page.meta["og:site_name"] == f"The {HOSTILE} Daily"
    assert page.meta["og:url"] == page.links["canonical"] == story.canonical_url
    assert page.meta["og:image"] == story.image_url
    assert page.meta["twitter:card"] == "summary_large_image"
    description = page.meta["og:description"]
    assert description == excerpt(story.summary) and description.endswith("…")
    assert description.startswith(f"Said {HOSTILE} today.") and len(description) <= 300
    # A person taken for a crawler still reaches the story, with the link's own parameters.
    assert page.meta["refresh"] == f"0;url={target}"
    assert page.anchors == [target]


def test_a_story_without_image_nor_newsletter_gets_a_small_card(site: Site) -> None:
    response = httpx.get(site.url(site.social_link), headers={"User-Agent": MASTODON})
    page = _head(response.text)
    assert page.meta["twitter:card"] == "summary"
    assert "og:image" not in page.meta and "og:site_name" not in page.meta
    assert page.meta["og:title"] == f"{HOSTILE} story 2"


def test_people_and_links_without_story_get_the_redirect(site: Site) -> None:
    person = httpx.get(site.url(site.edition_link), headers={"User-Agent": CHROME})
    assert person.status_code == 302 and person.headers["location"] == site.edition_link.url
    for agent in (TWITTER, CHROME):
        bare = httpx.get(site.url(site.bare_link), headers={"User-Agent": agent})
        assert bare.status_code == 302 and bare.headers["location"] == site.bare_link.url
    tampered = site.url(site.edition_link)[:-3] + "xyz"
    assert httpx.get(tampered, headers={"User-Agent": TWITTER}).status_code == 404


def test_crawler_fetches_are_bot_clicks_and_head_records_nothing(site: Site) -> None:
    url = site.url(site.edition_link)
    probe = httpx.head(url, headers={"User-Agent": FACEBOOK})
    assert probe.status_code == 200 and probe.content == b""
    settled_count(lambda: _clicks(site.sessions), 0, "Click rows after a HEAD")
    for agent in (TWITTER, MASTODON, FACEBOOK, CHROME):
        httpx.get(url, headers={"User-Agent": agent})
    settled_count(lambda: _clicks(site.sessions), 4, "Click rows")
    with site.sessions() as session:
        kinds = sorted(session.scalars(select(Click.kind)))
    assert kinds == [ClickKind.BOT] * 3 + [ClickKind.HUMAN]


def test_pages_are_kept_per_link_until_too_old_or_crowded_out(site: Site) -> None:
    def retitle(title: str) -> None:
        with site.sessions.begin() as session:
            session.get_one(Story, site.story.id).title = title

    def card(previews: LinkPreviews, link: Link) -> str:
        page = asyncio.run(previews.page(link.id))
        assert page is not None
        return _head(page.decode()).meta["og:title"]

    kept = LinkPreviews(site.sessions, size=1)
    assert card(kept, site.edition_link) == site.story.title
    retitle("Corrected headline")
    assert card(kept, site.edition_link) == site.story.title  # from memory
    card(kept, site.social_link)  # the one entry now holds the other link
    assert card(kept, site.edition_link) == "Corrected headline"

    retitle("Corrected again")
    assert card(LinkPreviews(site.sessions, max_age=0), site.edition_link) == "Corrected again"
    assert asyncio.run(kept.page(site.bare_link.id)) is None


def test_a_link_to_no_web_page_gets_no_card(site: Site) -> None:
    # In a refresh or an href a "javascript:" target would run on our domain.
    with site.sessions.begin() as session:
        link = Link(story_id=site.story.id, url="javascript:alert(document.domain)")
        session.add(link)
        session.flush()
        link_id = link.id
    assert asyncio.run(LinkPreviews(site.sessions).page(link_id)) is None
