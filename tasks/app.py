"""The Celery app. Settings follow DESIGN's reliability rules (4 and 5):

- messages carry ids only and are acknowledged after the task ran (acks_late), so a worker that
  dies mid-task leaves its message to be redelivered; the database decides what is still to do;
- one message prefetched per process, so a slow batch never holds others hostage;
- results are ignored (completion is counted from the database), time limits bound every task.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready

from digest.config import load_settings

settings = load_settings()

# A batch must finish well inside its delivery lease (digest.sending.LEASE, 10 minutes), or its
# rows would be declared ``unknown`` while it is still sending.
TASK_TIME_LIMIT = 300


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith(("redis", "rediss")):
        # Redis redelivers unacknowledged messages after this; it must outlast the longest task.
        return {"visibility_timeout": 3600}
    if broker_url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # kombu hands these to create_engine: wait for SQLite's write lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {}


app = Celery("digest", broker=settings.broker_url, include=["tasks.delivery"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    # A named queue lets several installations (or test runs) share one broker.
    task_default_queue=settings.queue,
    task_time_limit=TASK_TIME_LIMIT,
    task_soft_time_limit=TASK_TIME_LIMIT - 30,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_transport_options=_transport_options(settings.broker_url),
    timezone="UTC",
    enable_utc=True,
    beat_schedule={
        "tick": {
            "task": "digest.tick",
            "schedule": settings.tick_seconds,
            # Ticks that could not run in time are worthless: the next one does the same work.
            "options": {"expires": settings.tick_seconds},
        },
        "purge-tracking": {"task": "digest.purge_tracking", "schedule": 24 * 3600},
    },
)


@worker_ready.connect
def _tick_on_start(**_: Any) -> None:
    # Work the database says is due should not wait for the first beat tick.
    app.send_task("digest.tick")
