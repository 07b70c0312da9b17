"""Exactly one beat (DESIGN, reliability rule 6): a beat holds this lock for as long as it runs,
and any other beat started against the same installation stands by until it is free. A second
beat is then a hot spare, not a second schedule.

On PostgreSQL the lock is a session advisory lock, held by a connection of its own: it goes
with the connection, so a beat that dies (or loses its network) releases it within the time
the server takes to notice, and the spare takes over. A beat that finds its connection broken
cannot know whether a spare has taken over, so it stops (tasks/app.py: a standalone beat exits
with an error, a beat embedded in a worker stops that worker) and its supervisor restarts it as
a spare. On SQLite, a single-machine database, it is a lock on a file beside the data.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from digest.config import Settings

log = logging.getLogger(__name__)

STANDBY_POLL_SECONDS = 5.0
WATCH_SECONDS = 10.0
# The lock's connection must notice a dead network in about the time the watch takes, not in
# the kernel's default of hours: keepalives, and a bound on unacknowledged writes (ms).
LOCK_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def _advisory_key(queue: str) -> int:
    # Installations sharing a database are told apart by their queue, as on the broker.
    digest = hashlib.sha256(f"newsroom-digest beat {queue}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class BeatLock:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None

    @property
    def _on_postgresql(self) -> bool:
        return self.settings.database_url.startswith("postgresql")

    def try_acquire(self) -> bool:
        if self._on_postgresql:
            return self._try_advisory()
        return self._try_file()

    def _try_advisory(self) -> bool:
        engine = create_engine(
            self.settings.database_url, poolclass=NullPool, connect_args=LOCK_CONNECT_ARGS
        )
        # Autocommit: a session lock needs no transaction, and an idle open one would be cut by
        # idle_in_transaction_session_timeout.
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        key = _advisory_key(self.settings.queue)
        try:
            locked = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            if locked.scalar():
                self._connection = connection
                return True
        except BaseException:
            connection.close()
            raise
        connection.close()
        return False

    def _try_file(self) -> bool:
        file = (self.settings.data_dir / "beat.lock").open("ab")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        self._file = file
        return True

    def held(self) -> bool:
        """Whether the lock is still ours (a file lock cannot be lost while its file is open)."""
        if self._connection is None:
            return self._file is not None
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def watch(self, on_lost: Callable[[], None], interval: float = WATCH_SECONDS) -> None:
        """Call ``on_lost`` (which must end this beat) if the lock is ever lost."""

        def check() -> None:
            while self.held():
                time.sleep(interval)
            log.error("the beat lock's database connection broke: stopping this beat")
            on_lost()

        threading.Thread(target=check, name="beat-lock-watch", daemon=True).start()


def hold_beat_lock(
    settings: Settings, on_lost: Callable[[], None], poll: float = STANDBY_POLL_SECONDS
) -> BeatLock:
    """Block until this process holds the beat lock, then watch it; returns the lock, which
    must be kept referenced for as long as the beat runs."""
    lock = BeatLock(settings)
    standing_by = False
    while True:
        try:
            if lock.try_acquire():
                break
        except SQLAlchemyError as exc:
            log.warning("cannot reach the database for the beat lock (%s); retrying", exc)
        else:
            if not standing_by:
                log.info("another beat holds the schedule lock: standing by to take over")
                standing_by = True
        time.sleep(poll)
    log.info("beat lock acquired: this beat runs the schedule")
    lock.watch(on_lost)
    return lock
