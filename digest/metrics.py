"""Prometheus metrics for the whole installation, served by the web app at /metrics.

Every figure is read from the database (and the queue depth from the broker) at scrape time,
not counted in the memory of one process: workers, beat and several web processes all change
them, and any one web process must report the same numbers. The queries are grouped counts,
whole-table scans for clicks and opens; at tens of millions of clicks, scrape every minute
rather than every 15 s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from digest.broker import queue_depth
from digest.config import Settings
from digest.db import upsert_insert
from digest.models import (
    Click,
    ClickKind,
    Delivery,
    DeliveryState,
    Open,
    OpenKind,
    SocialPost,
    SocialPostState,
    TaskFailure,
    utcnow,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEND_RATE_WINDOW = timedelta(minutes=1)


def register_tasks(session: Session, names: Iterable[str]) -> None:
    """A zero count for every task a worker runs, so that a task's first failure is an
    increase that rate() and alerts can see, not a series appearing from nothing."""
    rows = [{"task": name, "failures": 0} for name in names]
    if rows:
        insert = upsert_insert(session, TaskFailure)
        session.execute(insert.on_conflict_do_nothing(index_elements=["task"]), rows)
        session.commit()


def record_task_failure(session: Session, task: str) -> None:
    """Count one failure of ``task``; called by the worker that saw it."""
    now = utcnow()
    insert = upsert_insert(session, TaskFailure).values(task=task, failures=1, last_failed_at=now)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["task"],
            set_={"failures": TaskFailure.failures + 1, "last_failed_at": now},
        )
    )
    session.commit()


def _by_label(
    metric: GaugeMetricFamily | CounterMetricFamily,
    states: type[StrEnum],
    counts: Iterable[tuple[object, int]],
) -> GaugeMetricFamily | CounterMetricFamily:
    """Every state as a sample, zero included: a series that appears only once it is non-zero
    breaks rate() and alerts on it."""
    found = {str(state): count for state, count in counts if state is not None}
    for state in states:
        metric.add_metric([state.value], found.get(state.value, 0))
    return metric


class InstallationCollector(Collector):
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "digest_up", "Whether a dependency answered this scrape (1) or not (0).",
            labels=["dependency"],
        )  # fmt: skip
        try:
            depth = queue_depth(self.settings)
        except Exception as exc:
            log.warning("metrics: the broker did not answer: %s", exc)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            queue = GaugeMetricFamily(
                "digest_queue_depth", "Tasks waiting in the broker queue.", labels=["queue"]
            )
            queue.add_metric([self.settings.queue], depth)
            yield queue
        try:
            with self.sessions() as session:
                yield from self._from_database(session)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
        yield up

    def _from_database(self, session: Session) -> list[Metric]:
        # Collected into a list first, so a database failure halfway yields no partial set.
        def grouped(column: InstrumentedAttribute[Any]) -> list[tuple[object, int]]:
            rows = session.execute(select(column, func.count()).group_by(column))
            return [(value, count) for value, count in rows]

        since = utcnow() - SEND_RATE_WINDOW
        sent_recently = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.sent_at >= since)
        )
        rate = GaugeMetricFamily(
            "digest_send_rate_per_second",
            "Messages accepted by the relay per second, over the last minute.",
            value=(sent_recently or 0) / SEND_RATE_WINDOW.total_seconds(),
        )
        failures = CounterMetricFamily(
            "digest_task_failures", "Celery tasks that failed, by task.", labels=["task"]
        )
        last_failure = GaugeMetricFamily(
            "digest_task_last_failure_timestamp_seconds",
            "When each task last failed (Unix time), for tasks that ever have.",
            labels=["task"],
        )
        for task, count, last in session.execute(
            select(TaskFailure.task, TaskFailure.failures, TaskFailure.last_failed_at)
        ):
            failures.add_metric([task], count)
            if last is not None:
                last_failure.add_metric([task], last.timestamp())
        return [
            _by_label(
                GaugeMetricFamily("digest_deliveries", "Deliveries by state.", labels=["state"]),
                DeliveryState,
                grouped(Delivery.state),
            ),
            rate,
            _by_label(
                CounterMetricFamily(
                    "digest_clicks", "Recorded clicks by kind of clicker.", labels=["kind"]
                ),
                ClickKind,
                grouped(Click.kind),
            ),
            _by_label(
                CounterMetricFamily(
                    "digest_opens", "Recorded opens by kind of opener.", labels=["kind"]
                ),
                OpenKind,
                grouped(Open.kind),
            ),
            _by_label(
                GaugeMetricFamily(
                    "digest_social_posts", "Social posts by state.", labels=["state"]
                ),
                SocialPostState,
                grouped(SocialPost.state),
            ),
            failures,
            last_failure,
        ]


def render(settings: Settings, sessions: sessionmaker[Session]) -> bytes:
    """The exposition text; blocking (database and broker round trips)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstallationCollector(settings, sessions))
    return generate_latest(registry)
