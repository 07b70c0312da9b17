"""The Celery app. Settings follow DESIGN's reliability rules (4 and 5):

- messages carry ids only and are acknowledged after the task ran (acks_late), so a worker that
  dies mid-task leaves its message to be redelivered; the database decides what is still to do;
- one message prefetched per process, so a slow batch never holds others hostage;
- results are ignored (completion is counted from the database), time limits bound every task.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Celery, Task
from celery.signals import (
    beat_init,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_ready,
)

from digest.beat_lock import BeatLock, hold_beat_lock
from digest.broker import transport_options
from digest.config import load_settings
from digest.db import session_factory
from digest.logs import configure_logging, log_context
from digest.metrics import record_task_failure

settings = load_settings()

# A batch must finish well inside its delivery lease (digest.sending.LEASE, 10 minutes), or its
# rows would be declared ``unknown`` while it is still sending.
TASK_TIME_LIMIT = 300


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
    broker_transport_options=transport_options(settings.broker_url),
    # Task events for Flower and `celery events`; cheap, and off by default in Celery.
    worker_send_task_events=True,
    task_send_sent_event=True,
    # SIGTERM is a warm shutdown: running batches finish (up to TASK_TIME_LIMIT). SIGQUIT, or
    # SIGTERM remapped with REMAP_SIGTERM=SIGQUIT where the platform's grace period is short,
    # is a cold shutdown, made soft: running tasks get this long, then their messages go
    # back to the queue (acks_late) and the delivery leases decide what is resent.
    worker_soft_shutdown_timeout=25.0,
    worker_enable_soft_shutdown_on_idle=True,
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


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: one format for every process.
    configure_logging(settings)


_task_logs: dict[str, contextlib.ExitStack] = {}


@task_prerun.connect
def _task_log_context(task_id: str, task: Task, **_: Any) -> None:
    stack = contextlib.ExitStack()
    stack.enter_context(log_context(task=task.name, task_id=task_id))
    _task_logs[task_id] = stack


@task_postrun.connect
def _end_task_log_context(task_id: str, **_: Any) -> None:
    stack = _task_logs.pop(task_id, None)
    if stack is not None:
        stack.close()


@task_failure.connect
def _count_failure(sender: Task, exception: BaseException, **_: Any) -> None:
    try:
        with session_factory(settings.database_url)() as session:
            record_task_failure(session, sender.name, f"{type(exception).__name__}: {exception}")
    except Exception:
        # The database being away is a likely cause of the failure itself; the log has it.
        logging.getLogger(__name__).exception("could not count the failure of %s", sender.name)


_beat_lock: BeatLock | None = None


@beat_init.connect
def _one_beat(**_: Any) -> None:
    # Blocks until no other beat runs the schedule (a standalone beat, or one embedded in a
    # worker with --beat): see digest.beat_lock.
    global _beat_lock
    _beat_lock = hold_beat_lock(settings)
