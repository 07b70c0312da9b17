"""Recording clicks and opens without a database round trip on the request path.

Each event is appended to a journal segment file (one ``write`` into the OS page cache: it
survives the death of this process) and kept in memory. Every flush interval (50 ms) the
events are classified and inserted in one statement per table, and the segment they came from
is deleted. Each event carries a unique key and the insert ignores keys already stored, so
replaying a segment twice cannot count anything twice.

What a crash can lose:
- the process dies (SIGKILL, OOM, a bug): nothing. Its segments stay on disk, still named as
  its own; the next process that starts in the same data directory finds them unlocked and
  replays them.
- the machine loses power: what the OS had not yet written back to disk (seconds, typically).
  An fsync per event would close that gap at ~1 ms per click, a price not worth a lost click.
- a graceful shutdown: nothing; the last batch is flushed before the process exits (and if the
  database is down then, the segment stays for the next start).

A segment is locked (flock) by the process writing it; a lock held means "owner alive".
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from digest.db import upsert_insert
from digest.models import Click, Delivery, Open, Subscriber
from digest.tracking import classify_click, classify_open

log = logging.getLogger(__name__)

SUFFIX = ".events"


@dataclass(frozen=True)
class Event:
    key: str
    table: str  # "clicks" | "opens"
    at: datetime
    delivery_id: int | None
    link_id: int | None
    ip_prefix: str | None
    user_agent: str | None

    def dumps(self) -> str:
        return json.dumps(
            [self.key, self.table, self.at.isoformat(), self.delivery_id, self.link_id,
             self.ip_prefix, self.user_agent],
            separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def loads(cls, line: str) -> Event:
        key, table, at, delivery_id, link_id, ip_prefix, user_agent = json.loads(line)
        return cls(key, table, datetime.fromisoformat(at), delivery_id, link_id, ip_prefix,
                   user_agent)  # fmt: skip


class _Segment:
    """One journal file, locked by its writer for as long as it writes it."""

    def __init__(self, path: Path, file: IO[str]) -> None:
        self.path = path
        self.file = file

    @classmethod
    def create(cls, directory: Path, name: str) -> _Segment:
        # Created under a temporary name and locked before it gets its real one, so a
        # recovering process never sees it unlocked.
        tmp = directory / f".{name}.tmp"
        file = tmp.open("a", encoding="utf-8")
        fcntl.flock(file, fcntl.LOCK_EX)
        path = directory / f"{name}{SUFFIX}"
        tmp.rename(path)
        return cls(path, file)

    def append(self, line: str) -> None:
        # Unbuffered in effect: each event reaches the OS before the response goes out.
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()  # releases the lock


def _insert_ignoring_duplicates(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    insert = upsert_insert(session, table)
    session.execute(insert.on_conflict_do_nothing(index_elements=["event_key"]), rows)


def store(session: Session, events: Iterable[Event]) -> int:
    """Classify and insert events; keys already stored are skipped. Returns events given."""
    events = list(events)
    if not events:
        return 0
    delivery_ids = {e.delivery_id for e in events if e.delivery_id is not None}
    sent_at: dict[int, datetime | None] = {}
    existing: set[int] = set()
    untracked: set[int] = set()
    for chunk in _chunks(sorted(delivery_ids), 500):
        for delivery_id, when, tracking in session.execute(
            select(Delivery.id, Delivery.sent_at, Subscriber.tracking_enabled)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.id.in_(chunk))
        ):
            existing.add(delivery_id)
            sent_at[delivery_id] = when
            if not tracking:
                untracked.add(delivery_id)
    clicks, opens = [], []
    for e in events:
        # An erased delivery: a click still counts for its link, an open for nothing.
        delivery_id = e.delivery_id if e.delivery_id in existing else None
        common = {"event_key": e.key, "ip_prefix": e.ip_prefix, "user_agent": e.user_agent}
        if delivery_id in untracked:
            # A reader who turned tracking off (or was erased) since the message went out: the
            # event still counts, classified, but keeps nothing about them.
            common.update(ip_prefix=None, user_agent=None)
        sent = sent_at.get(delivery_id) if delivery_id is not None else None
        if e.table == "clicks":
            kind = classify_click(e.user_agent, e.at, sent)
            clicks.append({**common, "link_id": e.link_id, "delivery_id": delivery_id,
                           "clicked_at": e.at, "kind": kind})  # fmt: skip
        elif delivery_id is not None:
            kind = classify_open(e.user_agent, e.ip_prefix, e.at, sent)
            opens.append({**common, "delivery_id": delivery_id, "opened_at": e.at, "kind": kind})
    if clicks:
        _insert_ignoring_duplicates(session, Click.__table__, clicks)
    if opens:
        _insert_ignoring_duplicates(session, Open.__table__, opens)
    session.commit()
    return len(events)


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def read_segment(path: Path) -> list[Event]:
    events = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                events.append(Event.loads(line))
            except (ValueError, TypeError):
                # A line cut short by the crash itself: it was never answered as recorded.
                log.warning("skipping an unreadable journal line in %s", path.name)
    return events


def recover(directory: Path, sessions: sessionmaker[Session]) -> int:
    """Replay the segments no live process holds; returns how many events were replayed."""
    replayed = 0
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            file = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            continue  # its owner flushed and deleted it meanwhile
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is writing it
            with sessions() as session:
                replayed += store(session, read_segment(path))
            path.unlink(missing_ok=True)
    for path in directory.glob(".*.tmp"):
        # A segment its process died creating, before any event went into it.
        with contextlib.suppress(FileNotFoundError), path.open("r") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            path.unlink(missing_ok=True)
    if replayed:
        log.warning("replayed %d tracking events left by a process that stopped", replayed)
    return replayed


class EventJournal:
    """The per-process journal: ``record`` on the request path, ``flush`` from a background
    task. Both run on the event loop thread; ``flush`` hands the database work to a thread."""

    def __init__(self, directory: Path, sessions: sessionmaker[Session]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.sessions = sessions
        self._id = f"{os.getpid()}-{time.time_ns()}"
        self._segments = itertools.count()
        self._events = itertools.count()
        self._current = self._open()
        self._batch: list[Event] = []
        # Segments rotated out but not yet stored (the database may have been down).
        self._pending: list[tuple[_Segment, list[Event]]] = []
        # A flush cancelled at shutdown keeps running in its thread; the final flush waits.
        self._storing = threading.Lock()

    def _open(self) -> _Segment:
        return _Segment.create(self.directory, f"{self._id}-{next(self._segments)}")

    def next_key(self) -> str:
        return f"{self._id}:{next(self._events)}"

    def record(self, event: Event) -> None:
        self._current.append(event.dumps())
        self._batch.append(event)

    def rotate(self) -> None:
        """Close the batch being written; called on the event loop thread."""
        if not self._batch:
            return
        self._pending.append((self._current, self._batch))
        self._current, self._batch = self._open(), []

    def store_pending(self) -> int:
        """Insert every rotated batch; safe to run in a worker thread. A failure leaves the
        batches pending (and their segments on disk) for the next call."""
        stored = 0
        with self._storing:
            while self._pending:
                segment, events = self._pending[0]
                with self.sessions() as session:
                    stored += store(session, events)
                segment.close()
                segment.path.unlink(missing_ok=True)
                self._pending.pop(0)
        return stored

    def close(self) -> None:
        """Release the segments still held (after a final flush, they are empty or pending)."""
        for segment, _ in self._pending:
            segment.close()
        self._current.close()
        if not self._batch:
            self._current.path.unlink(missing_ok=True)
