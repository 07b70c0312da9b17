"""The Celery app. Settings follow DESIGN's reliability rules (4 and 5):

- messages carry ids only and are acknowledged after the task ran (acks_late), so a worker that
  dies mid-task leaves its message to be redelivered; the database decides what is still to do;
- one message prefetched per process, so a slow batch never holds others hostage;
- results are ignored (completion is counted from the database), time limits bound every task.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery import Celery, Task
from celery.beat import PersistentScheduler
from celery.signals import (
    beat_embedded_init,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_ready,
)
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from digest.beat_lock import BeatLock, hold_beat_lock
from digest.broker import transport_options
from digest.config import load_settings
from digest.db import session_factory
from digest.logs import LogContextToken, configure_logging, pop_log_context, push_log_context
from digest.metrics import record_task_failure, register_tasks

settings = load_settings()
# One engine per worker process, shared by its tasks.
sessions = session_factory(settings.database_url)

# A batch must finish well inside its delivery lease (digest.sending.LEASE, 10 minutes), or its
# rows would be declared ``unknown`` while it is still sending.
TASK_TIME_LIMIT = 300
# How often the inbound mailbox (bounces, complaints, mailto unsubscribes) is read.
INBOUND_POLL_SECONDS = 60


app = Celery("digest", broker=settings.broker_url, include=["tasks.delivery", "tasks.social"])
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
        "sunset": {"task": "digest.sunset", "schedule": 24 * 3600},
        # Without a mailbox configured the task returns at once; bounces then come by webhook.
        "inbound": {
            "task": "digest.process_inbound",
            "schedule": INBOUND_POLL_SECONDS,
            "options": {"expires": INBOUND_POLL_SECONDS},
        },
    },
)


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    with _bookkeeping_session() as session:
        register_tasks(session, [name for name in app.tasks if name.startswith("digest.")])
    # Work the database says is due should not wait for the first beat tick.
    app.send_task("digest.tick")


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: one format for every process.
    configure_logging(settings)


_task_logs: dict[str, LogContextToken] = {}


@task_prerun.connect
def _task_log_context(task_id: str, task: Task, **_: Any) -> None:
    _task_logs[task_id] = push_log_context(task=task.name, task_id=task_id)


@task_postrun.connect
def _end_task_log_context(task_id: str, **_: Any) -> None:
    token = _task_logs.pop(task_id, None)
    if token is not None:
        pop_log_context(token)


def _bookkeeping_session() -> Session:
    # Its own connection each time, not the pool's: task_failure can fire in the worker's main
    # process (a hard time limit), whose pooled connections forked children would inherit.
    return Session(create_engine(settings.database_url, poolclass=NullPool))


@task_failure.connect
def _count_failure(sender: Task, **_: Any) -> None:
    try:
        with _bookkeeping_session() as session:
            record_task_failure(session, sender.name)
    except Exception:
        # The database being away is a likely cause of the failure itself; the log has it.
        logging.getLogger(__name__).exception("could not count the failure of %s", sender.name)


_embedded_beat = False


@beat_embedded_init.connect
def _note_embedded(**_: Any) -> None:
    global _embedded_beat
    _embedded_beat = True


def _beat_lock_lost() -> None:
    # Another beat may be running the schedule by now: this one must not tick beside it. A beat
    # embedded in a worker (--beat) stops the worker too, or the worker would live on with no
    # beat at all; its supervisor restarts it, and its beat stands by.
    if _embedded_beat:
        os.kill(os.getppid(), signal.SIGTERM)
    os._exit(1)


class LockedScheduler(PersistentScheduler):
    """The beat's scheduler, created only once this process holds the beat lock
    (digest.beat_lock): before the schedule file is opened, and failing closed, since an error
    here stops the beat instead of being logged and passed over as in a signal handler."""

    def __init__(self, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        # A lazy instance only describes the schedule (beat's start-up banner makes one).
        self.lock: BeatLock | None = None if lazy else hold_beat_lock(settings, _beat_lock_lost)
        super().__init__(*args, lazy=lazy, **kwargs)


app.conf.beat_scheduler = f"{__name__}:LockedScheduler"
