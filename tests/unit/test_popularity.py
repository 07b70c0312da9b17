"""Telling readers from machines, and Popular Now from human clicks and the site's list."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from digest.db import session_factory
from digest.event_journal import Event, store
from digest.models import Click, ClickKind, Delivery, Link, SourceRole, Story, utcnow
from digest.sample_site import LISTS
from digest.selection import popular
from digest.tracking import SCANNER_WINDOW, classify_click
from tests.support import prepare_sample_edition

NOW = utcnow()
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15"


@pytest.mark.parametrize(
    ("agent", "since_sent", "kind"),
    [
        (BROWSER, timedelta(hours=2), ClickKind.HUMAN),
        (BROWSER, None, ClickKind.HUMAN),  # a shared link: no delivery to compare with
        # Every link of a message fetched moments after delivery: a security gateway.
        (BROWSER, timedelta(seconds=3), ClickKind.SCANNER),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", timedelta(hours=2), ClickKind.SCANNER),
        ("Mimecast-URL-Protect/1.0", timedelta(hours=2), ClickKind.SCANNER),
        ("Proofpoint URL Defense", None, ClickKind.SCANNER),
        ("Mozilla/5.0 (compatible; Googlebot/2.1)", None, ClickKind.BOT),
        ("curl/8.5.0", None, ClickKind.BOT),
        ("python-requests/2.32", None, ClickKind.BOT),
        ("Slackbot-LinkExpanding 1.0", None, ClickKind.BOT),
        ("", None, ClickKind.BOT),
        (None, None, ClickKind.BOT),
    ],
)
def test_classify_click(agent, since_sent, kind) -> None:
    sent_at = NOW - since_sent if since_sent is not None else None
    assert classify_click(agent, NOW, sent_at) == kind


def test_scanner_window_is_seconds_not_minutes() -> None:
    assert timedelta(minutes=1) >= SCANNER_WINDOW


def click(link_id: int, delivery_id: int | None, ip_prefix: str, agent: str) -> Event:
    return Event(uuid.uuid4().hex, "clicks", utcnow(), delivery_id, link_id, ip_prefix, agent)


def test_human_clicks_lead_popular_now_and_machines_count_for_nothing(sqlite_settings) -> None:
    edition = prepare_sample_edition(sqlite_settings, 3)
    sessions = session_factory(sqlite_settings.database_url)
    with sessions() as session:
        session.execute(Delivery.__table__.update().values(sent_at=NOW - timedelta(hours=1)))
        session.commit()
        links = session.scalars(select(Link).where(Link.edition_id == edition.id)).all()
        deliveries = session.scalars(select(Delivery.id)).all()
        liked, scanned = links[-1], links[-2]
        clicks = [  # three readers click one story, twice each; a crawler hammers another
            *(click(liked.id, d, "198.51.100.0/24", BROWSER) for d in deliveries for _ in "ab"),
            *(click(scanned.id, None, "203.0.113.0/24", "Googlebot/2.1") for _ in range(10)),
        ]
        store(session, clicks)
        kinds = sorted(k.value for k in session.scalars(select(Click.kind)))
        assert kinds == ["bot"] * 10 + ["human"] * 6

        ranked = [s.title for s in popular(session, utcnow(), limit=5, exclude=[])]
        liked_title = session.get_one(Story, liked.story_id).title
        # 3 unique human clicks lead; the rest is the site's own list in its order, where the
        # crawler's 10 clicks moved nothing.
        site_list = [s.title for s in LISTS[SourceRole.POPULAR] if s.title != liked_title]
        assert ranked == [liked_title, *site_list][:5]
        shown = popular(session, utcnow(), 5, exclude=[liked.story_id])
        assert liked.story_id not in [s.id for s in shown]
