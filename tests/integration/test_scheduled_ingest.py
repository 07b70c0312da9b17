"""Scheduled ingestion on a real worker with its beat: each due source is fetched in its own
task, so a broken source backs off on its own while the healthy one is stored."""

from __future__ import annotations

from sqlalchemy import func, select

from digest.db import session_factory
from digest.models import Source, SourceRole, Story, utcnow
from digest.sample_site import LISTS, rss_feed
from tests.support import Page, wait_until


def test_beat_ingests_due_sources_and_backs_off_the_broken_one(
    env, sqlite_settings, local_site, start_worker
):
    local_site.pages["/latest.xml"] = Page(rss_feed(SourceRole.LATEST, utcnow()).encode())
    local_site.pages["/broken.xml"] = Page(b"internal error", 500)
    sessions = session_factory(sqlite_settings.database_url)
    with sessions() as session:
        broken = Source(url=local_site.url("/broken.xml"))
        healthy = Source(url=local_site.url("/latest.xml"))
        session.add_all([broken, healthy])
        session.commit()

    worker = start_worker({**env, "DIGEST_FETCH_ALLOWLIST": "127.0.0.1"})

    def both_fetched() -> bool:
        assert worker.proc.poll() is None, worker.output()
        with sessions() as session:
            stored = session.scalar(select(func.count()).select_from(Story))
            failed = session.get_one(Source, broken.id).last_error
        return stored == len(LISTS[SourceRole.LATEST]) and failed is not None

    wait_until(both_fetched, 60, "the healthy source stored and the broken one failed")
    # Wait for two more ticks: the broken source must not be fetched again meanwhile.
    ticks = worker.output().count("Sending due task tick")
    wait_until(
        lambda: worker.output().count("Sending due task tick") >= ticks + 2, 20, "two more ticks"
    )

    now = utcnow()
    with sessions() as session:
        failed = session.get_one(Source, broken.id)
        fine = session.get_one(Source, healthy.id)
        assert "answered HTTP 500" in (failed.last_error or "")
        assert failed.error_count == 1
        assert failed.next_fetch_at is not None and failed.next_fetch_at > now
        assert (fine.last_error, fine.error_count) == (None, 0)
        assert fine.last_success_at is not None
        titles = set(session.scalars(select(Story.title)))
    assert titles == {s.title for s in LISTS[SourceRole.LATEST]}
    assert local_site.paths().count("/broken.xml") == 1
    assert worker.proc.poll() is None, worker.output()
