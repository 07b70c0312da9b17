"""Send rates shared by every worker process on every machine, as token buckets in the
database: the installation's global rate, and one per destination domain (Celery's rate_limit
is per worker, so N workers would send N times the rate).

Taking a token is one atomic UPDATE … RETURNING: the bucket refills at ``rate`` tokens a second
up to ``burst``, and a take always succeeds, possibly driving the balance negative. A negative
balance is a queue: the taker waits ``-balance / rate`` seconds before it sends, so concurrent
takers are spaced out in the order the database served them, without a lock held while waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import case, literal, update
from sqlalchemy.orm import Session, sessionmaker

from digest.db import upsert_insert
from digest.models import RateBucket

SEND_BUCKET = "send"


class SendRateLimit:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        rate: float,
        bucket: str = SEND_BUCKET,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sessions = sessions
        self.rate = rate
        self.bucket = bucket
        # One second's worth: a worker that was idle may start at once, but not in a flood.
        self.burst = max(rate, 1.0)
        self.clock = clock
        self.sleep = sleep
        with sessions() as session:
            session.execute(
                upsert_insert(session, RateBucket)
                .values(name=bucket, tokens=self.burst, updated_at=clock())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            session.commit()

    def take(self) -> float:
        """Take one token; returns how long the caller must wait before using it."""
        now = self.clock()
        refilled = RateBucket.tokens + (literal(now) - RateBucket.updated_at) * self.rate
        with self.sessions() as session:
            balance = session.execute(
                update(RateBucket)
                .where(RateBucket.name == self.bucket)
                .values(
                    tokens=case((refilled > self.burst, self.burst), else_=refilled) - 1,
                    updated_at=now,
                )
                .returning(RateBucket.tokens)
            ).scalar_one()
            session.commit()
        return max(0.0, -balance / self.rate)

    def wait(self) -> None:
        """Block until this process may send one more message (through this bucket)."""
        delay = self.take()
        if delay > 0:
            self.sleep(delay)
