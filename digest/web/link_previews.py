"""The card page a link-preview crawler gets for a tracked link (``/c/{token}``).

Mastodon servers, X, Facebook, Bluesky and the rest fetch a shared URL to draw its preview card.
Ours is a redirect, and where the crawler follows it the card depends on the news site's own
tags, or is missing when the site blocks bots. For a link to a story the crawler gets instead
a small page whose OpenGraph and Twitter card tags come from the story row (digest.tracking
decides who is a crawler; digest.web.app serves the page in place of the 302).

A shared post is fetched by every Mastodon server it reaches, within minutes: pages are built
off the event loop and kept per link, so such a wave costs the database about one query per
link every few minutes, and human clicks nothing but the user-agent check.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from digest.models import Edition, Link, Newsletter, Story
from digest.render import environment
from digest.social.compose import excerpt


def _web(url: str | None) -> bool:
    # Feeds and editors supply these URLs; in an href or a refresh, "javascript:" would run on
    # our domain, which a Location header never allowed.
    return url is not None and urlsplit(url).scheme.lower() in ("http", "https")


class LinkPreviews:
    """Link id → its card page as UTF-8 bytes, or None where the link has no story (the
    crawler gets the redirect then). Links never change, but their stories do (a corrected
    headline), so an entry is rebuilt after ``max_age`` seconds; ``size`` caps memory."""

    def __init__(
        self, sessions: sessionmaker[Session], size: int = 10_000, max_age: float = 300.0
    ) -> None:
        self.sessions = sessions
        self.size = size
        self.max_age = max_age
        self._template = environment().get_template("web/link_preview.html")
        self._pages: dict[int, tuple[float, bytes | None]] = {}

    def _build(self, link_id: int) -> bytes | None:
        with self.sessions() as session:
            row = session.execute(
                select(Link.url, Story, Newsletter.name)
                .join(Story, Story.id == Link.story_id)
                .outerjoin(Edition, Edition.id == Link.edition_id)
                .outerjoin(Newsletter, Newsletter.id == Edition.newsletter_id)
                .where(Link.id == link_id)
            ).first()
        if row is None:
            return None
        target, story, site_name = row
        if not (_web(target) and _web(story.canonical_url)):
            return None
        page = self._template.render(
            story=story,
            description=excerpt(story.summary),
            image=story.image_url if _web(story.image_url) else None,
            # A shared social link belongs to no newsletter: no site name then.
            site_name=site_name,
            target=target,
        )
        return page.encode()

    async def page(self, link_id: int) -> bytes | None:
        now = time.monotonic()
        entry = self._pages.get(link_id)
        if entry is None or entry[0] <= now:
            entry = (now + self.max_age, await run_in_threadpool(self._build, link_id))
            # Re-inserted, so that eviction (oldest first) follows when an entry was built.
            self._pages.pop(link_id, None)
            if len(self._pages) >= self.size:
                self._pages.pop(next(iter(self._pages)))
            self._pages[link_id] = entry
        return entry[1]
