"""Tracking events survive the web process: a SIGKILL loses nothing, a replay counts nothing
twice, a graceful stop flushes everything, and a live process's journal is left alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.event_journal import SUFFIX, Event, EventJournal, read_segment, recover
from digest.models import Click, ClickKind, Delivery, Link, utcnow
from digest.tokens import TokenSigner
from tests.support import free_port, prepare_sample_edition, settled_count, wait_until

CLICKS = 20
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def _clicks(settings: Settings) -> Callable[[], int]:
    def count() -> int:
        with session_factory(settings.database_url)() as session:
            return session.scalar(select(func.count()).select_from(Click))

    return count


def _event(journal: EventJournal, link_id: int, delivery_id: int | None) -> Event:
    return Event(journal.next_key(), "clicks", utcnow(), delivery_id, link_id, None, BROWSER)


@pytest.fixture
def link(sqlite_settings: Settings) -> tuple[int, int]:
    prepare_sample_edition(sqlite_settings, 2)
    with session_factory(sqlite_settings.database_url)() as session:
        return session.scalar(select(Link.id)), session.scalar(select(Delivery.id))


def test_flushed_batches_are_stored_classified_and_their_segments_removed(
    sqlite_settings, link
) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    directory = sqlite_settings.data_dir / "events"
    journal = EventJournal(directory, sessions)
    for _ in range(3):
        journal.record(_event(journal, *link))
    journal.rotate()
    assert journal.store_pending() == 3
    journal.close()
    assert list(directory.glob(f"*{SUFFIX}")) == []
    with sessions() as session:
        assert set(session.scalars(select(Click.kind))) == {ClickKind.HUMAN}
        assert len(set(session.scalars(select(Click.event_key)))) == 3


def test_a_dead_process_journal_is_replayed_once(sqlite_settings, link, tmp_path) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    directory = sqlite_settings.data_dir / "events"
    dead = EventJournal(directory, sessions)
    for _ in range(5):
        dead.record(_event(dead, *link))
    # The process dies: its file handles close (releasing the lock), nothing is flushed.
    dead._current.file.close()
    (segment,) = directory.glob(f"*{SUFFIX}")
    copy = shutil.copy(segment, tmp_path / "copy")

    assert recover(directory, sessions) == 5
    assert _clicks(sqlite_settings)() == 5
    # The same segment again (a crash between the insert and the delete): nothing twice.
    shutil.copy(copy, segment)
    assert recover(directory, sessions) == 5
    assert _clicks(sqlite_settings)() == 5


def test_a_live_process_journal_is_not_replayed(sqlite_settings, link) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    directory = sqlite_settings.data_dir / "events"
    alive = EventJournal(directory, sessions)
    alive.record(_event(alive, *link))
    assert recover(directory, sessions) == 0
    alive.rotate()
    assert alive.store_pending() == 1
    alive.close()


def test_a_line_cut_short_by_the_crash_is_skipped(tmp_path, sqlite_settings, link) -> None:
    sessions = session_factory(sqlite_settings.database_url)
    journal = EventJournal(tmp_path, sessions)
    journal.record(_event(journal, *link))
    journal._current.file.write('["cut-sho')
    journal._current.file.close()
    (segment,) = tmp_path.glob(f"*{SUFFIX}")
    assert len(read_segment(segment)) == 1


def _web(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")} | env
    digest = Path(sys.executable).parent / "digest"
    proc = subprocess.Popen(
        [str(digest), "web", "--port", str(port)],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _up(port), 30, "the web app to answer")
    return proc


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_no_click_is_lost_when_the_web_process_stops(env, sqlite_settings, link, stop) -> None:
    # A flush interval longer than the test: every click is still only in the journal.
    env = env | {"DIGEST_TRACKING_FLUSH_MS": "600000"}
    settings = load_settings(env)
    token = TokenSigner(settings.secret_keys).click_token(*link)
    port = free_port()
    web = _web(env, port)
    try:
        for _ in range(CLICKS):
            response = httpx.get(
                f"http://127.0.0.1:{port}/c/{token}", headers={"User-Agent": BROWSER}
            )
            assert response.status_code == 302
        assert _clicks(settings)() == 0
    finally:
        web.send_signal(stop)
        web.wait(timeout=30)
    if stop == signal.SIGTERM:
        # A graceful stop flushes the last batch before exiting.
        assert _clicks(settings)() == CLICKS
    else:
        assert _clicks(settings)() == 0
        # The next process to start replays what the killed one left.
        restarted = _web(env, free_port())
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
    settled_count(_clicks(settings), CLICKS, "every click, exactly once")
    assert list((settings.data_dir / "events").glob(f"*{SUFFIX}")) == []
