"""The edition on the web: "view in browser" shows the reader's own copy, the public archive
and its RSS feed list what went out, with OpenGraph tags and no reader's links."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape

import httpx
from sqlalchemy import select

from digest.config import load_settings
from digest.db import session_factory
from digest.editions import prepare_edition
from digest.models import Newsletter, Subscription, utcnow
from tests.support import parse_message, seed_sample_site, send_until_done

TITLE = re.compile(r'class="headline"[^>]*>([^<]+)</a>')


def test_view_in_browser_archive_and_feed(env, web_server) -> None:
    settings = load_settings(env)
    newsletter_id = seed_sample_site(settings, 3)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        first = session.scalars(select(Subscription).order_by(Subscription.id)).first()
        first.sections = ["Asia"]
        session.commit()
        now = utcnow()
        edition = prepare_edition(
            session, session.get_one(Newsletter, newsletter_id), now.date(), now
        )
    send_until_done(settings, edition.id)
    base = web_server(settings)

    messages = [
        parse_message(p.read_bytes()) for p in sorted((settings.data_dir / "outbox").glob("*.eml"))
    ]
    by_reader = {m["To"]: m for m in messages}
    chooser = by_reader["reader001@example.org"]
    html = chooser.get_body(("html",)).get_content()
    text = chooser.get_body(("plain",)).get_content()
    view = re.search(r"View in browser: (\S+)", text).group(1)
    assert view.startswith(f"{settings.base_url}/v/")
    page = httpx.get(base + view.removeprefix(settings.base_url))
    assert page.status_code == 200
    assert page.headers["cache-control"].startswith("no-store")
    # Exactly the stories this reader's message carried, in its order, with its own links.
    assert TITLE.findall(page.text) == TITLE.findall(html)
    assert TITLE.findall(page.text) != TITLE.findall(
        by_reader["reader002@example.org"].get_body(("html",)).get_content()
    )
    assert "/c/" in page.text and "/u/" in page.text
    assert "/o/" not in page.text  # viewing the page is not an open
    assert httpx.get(base + view.removeprefix(settings.base_url)[:-2] + "xx").status_code == 404

    archive = httpx.get(f"{base}/archive/daily")
    assert archive.status_code == 200
    day = f"{edition.issue_date:%Y-%m-%d}"
    assert f'href="{settings.base_url}/archive/daily/{day}"' in archive.text
    public = httpx.get(f"{base}/archive/daily/{day}")
    assert public.status_code == 200
    assert f'<meta property="og:title" content="{edition.subject}">' in unescape(public.text)
    assert f'content="{settings.base_url}/archive/daily/{day}"' in public.text
    # A new reader's copy: every section, plain story links, nobody's own links.
    assert len(TITLE.findall(public.text)) >= len(TITLE.findall(html))
    assert not re.search(r"/(c|u|p|o|v)/", public.text)
    assert "utm_medium=email" in public.text

    feed = httpx.get(f"{base}/archive/daily/feed.xml")
    assert feed.headers["content-type"].startswith("application/rss+xml")
    items = ET.fromstring(feed.content).findall("./channel/item")
    assert [(i.findtext("title"), i.findtext("link")) for i in items] == [
        (edition.subject, f"{settings.base_url}/archive/daily/{day}")
    ]

    # An edition nobody has received yet is not public.
    with sessions() as session:
        held = prepare_edition(
            session,
            session.get_one(Newsletter, newsletter_id),
            edition.issue_date.replace(year=edition.issue_date.year + 1),
            now,
            hold=True,
        )
    assert httpx.get(f"{base}/archive/daily/{held.issue_date:%Y-%m-%d}").status_code == 404
    assert httpx.get(f"{base}/archive/nope").status_code == 404
