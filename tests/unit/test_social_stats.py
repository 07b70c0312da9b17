"""Clicks on shared links, per social post and per account."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.event_journal import Event, store
from digest.models import Link, SocialAccount, SocialPost, SocialPostState, Story, utcnow
from digest.stats import social_report
from tests.support import seed_sample_site

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile"


def _click(link_id: int, network: str, agent: str = BROWSER) -> Event:
    return Event(uuid.uuid4().hex, "clicks", utcnow(), None, link_id, network, agent)


def test_social_clicks_per_post_and_account(env, web_server) -> None:
    env["DIGEST_API_TOKENS"] = "s3cret"
    settings = load_settings(env)
    migrate(settings.database_url)
    seed_sample_site(settings, 1)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        first, second = session.scalars(select(Story).order_by(Story.id).limit(2)).all()
        mastodon = SocialAccount(platform="mastodon", handle="@news@example.social")
        bluesky = SocialAccount(platform="bluesky", handle="news.example.com")
        quiet = SocialAccount(platform="telegram", handle="@examplenews")
        session.add_all([mastodon, bluesky, quiet])
        session.flush()
        posts = [
            SocialPost(story_id=first.id, account_id=mastodon.id, state=SocialPostState.POSTED),
            SocialPost(story_id=second.id, account_id=mastodon.id, state=SocialPostState.POSTED),
            SocialPost(story_id=first.id, account_id=bluesky.id, state=SocialPostState.QUEUED),
        ]
        session.add_all(posts)
        session.flush()
        links = [
            Link(social_post_id=p.id, story_id=p.story_id, url=f"{first.canonical_url}?p={p.id}")
            for p in posts
        ]
        session.add_all(links)
        session.commit()
        store(
            session,
            [
                # Three human clicks from two networks on the first post, a crawler on it too.
                _click(links[0].id, "198.51.100.0/24"),
                _click(links[0].id, "198.51.100.0/24"),
                _click(links[0].id, "203.0.113.0/24"),
                _click(links[0].id, "192.0.2.0/24", "Mastodon/4.2 (http.rb; +https://x) Bot"),
                _click(links[1].id, "198.51.100.0/24"),
            ],
        )
        report = social_report(session)

    by_post = {p.post_id: p for p in report.posts}
    first_post = by_post[posts[0].id]
    assert (first_post.human_clicks, first_post.human_networks) == (3, 2)
    assert first_post.non_human_clicks == 1
    assert (by_post[posts[2].id].human_clicks, by_post[posts[2].id].state) == (0, "queued")
    by_account = {a.handle: a for a in report.accounts}
    assert (
        by_account["@news@example.social"].posts,
        by_account["@news@example.social"].human_clicks,
    ) == (2, 4)
    assert (by_account["@examplenews"].posts, by_account["@examplenews"].human_clicks) == (0, 0)

    base = web_server(settings)
    response = httpx.get(f"{base}/api/social/stats", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert {a["handle"]: a["human_clicks"] for a in response.json()["accounts"]} == {
        "@news@example.social": 4,
        "news.example.com": 0,
        "@examplenews": 0,
    }
