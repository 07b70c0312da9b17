"""The `digest sources`, `digest ingest` and `digest stories` commands, run as an editor runs
them, against feeds on a real local HTTP server."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.cli import main
from digest.config import load_settings
from digest.db import session_factory
from digest.models import Source, SourceRole, Story, utcnow
from digest.sample_site import LISTS, rss_feed
from digest.selection import must_reads
from tests.support import LocalSite, Page


@pytest.fixture
def cli_env(env: dict[str, str]) -> dict[str, str | None]:
    # The developer's own DIGEST_* settings must not leak into the command.
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DIGEST_")}
    return {**unset, **env, "DIGEST_FETCH_ALLOWLIST": "127.0.0.1"}


@pytest.fixture
def digest(cli_env) -> Callable[..., Result]:
    runner = CliRunner()

    def digest(*args: str) -> Result:
        return runner.invoke(main, list(args), env=cli_env, catch_exceptions=False)

    return digest


@pytest.fixture
def sessions(env: dict[str, str]) -> sessionmaker[Session]:
    return session_factory(load_settings(env).database_url)


@pytest.fixture
def feeds(local_site: LocalSite) -> dict[SourceRole, str]:
    """The sample site's feeds, one per list, on the local server."""
    now = utcnow()
    urls = {}
    for role in LISTS:
        local_site.pages[f"/{role.value}.xml"] = Page(rss_feed(role, now).encode())
        urls[role] = local_site.url(f"/{role.value}.xml")
    return urls


def story_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Story)) or 0


def test_sources_add_list_and_refuse_a_duplicate(digest, feeds):
    assert digest("sources", "list").output.startswith("no sources yet")

    added = digest("sources", "add", feeds[SourceRole.MUST_READ], "--role", "must_read")
    assert added.exit_code == 0, added.output
    assert f"added source 1: {feeds[SourceRole.MUST_READ]}" in added.output

    listed = digest("sources", "list")
    assert listed.exit_code == 0
    assert f"rss   must_read {feeds[SourceRole.MUST_READ]}" in listed.output
    assert "last success never; ok" in listed.output

    # Another spelling of the same address is the same source.
    respelled = feeds[SourceRole.MUST_READ].replace("http://", "HTTP://") + "?utm_source=x#top"
    duplicate = digest("sources", "add", respelled)
    assert duplicate.exit_code == 1
    assert "is a source already" in duplicate.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a url"], "http(s)://"),
        (["ftp://news.example.com/feed.xml"], "http(s)://"),
        (["http://news.example.com:99999/feed.xml"], "Port"),
        (["https://news.example.com/", "--kind", "html", "--selectors", "{not json"], "not JSON"),
        (["https://news.example.com/", "--kind", "html", "--selectors", '["li"]'], "selectors"),
        (
            [
                "https://news.example.com/",
                "--kind",
                "html",
                "--selectors",
                '{"lists": {"x": "ul"}}',
            ],
            "selectors",
        ),
        (
            ["https://news.example.com/", "--kind", "html", "--selectors", '{"item": "[[["}'],
            "selectors",
        ),
    ],
    ids=[
        "not-a-url",
        "ftp",
        "bad-port",
        "selectors-not-json",
        "selectors-not-an-object",
        "selectors-unknown-list",
        "selectors-bad-css",
    ],
)
def test_sources_add_rejects_bad_input(digest, args, message):
    result = digest("sources", "add", *args)

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert digest("sources", "list").output.startswith("no sources yet")


def test_ingest_goes_on_past_a_broken_source(digest, sessions, local_site, feeds):
    local_site.pages["/broken.xml"] = Page(b"down for maintenance", 500)
    digest("sources", "add", local_site.url("/broken.xml"))
    digest("sources", "add", feeds[SourceRole.LATEST])

    result = digest("ingest")

    assert result.exit_code == 1
    stories = len(LISTS[SourceRole.LATEST])
    assert f"1 of 2 sources ingested; {stories} stories stored" in result.stdout
    assert f"failed: source 1 ({local_site.url('/broken.xml')})" in result.stderr
    assert "HTTP 500" in result.stderr
    assert story_count(sessions) == stories
    listed = digest("sources", "list").output
    assert "1 failures: " in listed and "answered HTTP 500" in listed

    # One source at a time, or a clear word when there is no such source.
    again = digest("ingest", "--source", "2")
    assert again.exit_code == 0
    assert f"1 of 1 sources ingested; {stories} stories stored" in again.output
    missing = digest("ingest", "--source", "99")
    assert missing.exit_code == 1
    assert "no such source" in missing.output


def test_removing_a_source_keeps_its_stories(digest, sessions, feeds):
    digest("sources", "add", feeds[SourceRole.LATEST])
    digest("ingest")
    stories = story_count(sessions)

    removed = digest("sources", "remove", "1")

    assert removed.exit_code == 0
    assert "its stories are kept" in removed.output
    assert story_count(sessions) == stories > 0
    with sessions() as session:
        assert session.scalars(select(Source)).all() == []
        assert {s.source_id for s in session.scalars(select(Story))} == {None}
    again = digest("sources", "remove", "1")
    assert again.exit_code == 1
    assert "there is no source 1" in again.output


def test_pinned_story_leads_the_must_reads_until_unpinned(digest, sessions, feeds):
    digest("sources", "add", feeds[SourceRole.MUST_READ], "--role", "must_read")
    digest("sources", "add", feeds[SourceRole.LATEST])
    assert digest("ingest").exit_code == 0
    site_order = [s.title for s in LISTS[SourceRole.MUST_READ]]
    story = LISTS[SourceRole.LATEST][2]
    until = (utcnow() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")

    # Any spelling of the story's address finds it.
    respelled = story.url.replace("news.example.com", "News.Example.COM") + "?utm_source=m#top"

    pinned = digest("stories", "pin", respelled, "--until", until)

    assert pinned.exit_code == 0, pinned.output
    assert f"pinned until {until[:10]}" in pinned.output
    with sessions() as session:
        assert [s.title for s in must_reads(session, utcnow(), 10)] == [story.title, *site_order]

    unpinned = digest("stories", "unpin", story.url)

    assert unpinned.exit_code == 0
    with sessions() as session:
        assert [s.title for s in must_reads(session, utcnow(), 10)] == site_order


@pytest.mark.parametrize(
    ("url", "until", "code", "message"),
    [
        (None, "2020-01-01", 2, "must be in the future"),
        ("https://news.example.com/never/ingested", "2999-01-01", 1, "no stored story has"),
        ("http://news.example.com:99999/a", "2999-01-01", 2, "Invalid value for URL"),
    ],
    ids=["past-until", "unknown-story", "bad-url"],
)
def test_pin_refuses(digest, sessions, feeds, url, until, code, message):
    digest("sources", "add", feeds[SourceRole.LATEST])
    digest("ingest")
    url = url or LISTS[SourceRole.LATEST][0].url

    result = digest("stories", "pin", url, "--until", until)

    assert result.exit_code == code
    assert message in result.output
    with sessions() as session:
        assert all(s.pinned_until is None for s in session.scalars(select(Story)))
