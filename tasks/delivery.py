"""Thin tasks: each translates a message (ids only) into a call on digest/."""

from __future__ import annotations

import math

from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from digest import sending
from digest.db import session_factory
from digest.editions import prepare_due_editions
from digest.models import utcnow
from tasks.app import app, settings

log = get_task_logger(__name__)
sessions = session_factory(settings.database_url)


@app.task(name="digest.tick")
def tick() -> None:
    """The beat's heartbeat: settle overdue rows, prepare due editions, dispatch send batches.

    Duplicate ticks are harmless: preparing is idempotent and a batch task that finds nothing
    to claim does nothing.
    """
    now = utcnow()
    with sessions() as session:
        settled = sending.reconcile(session, now)
        prepare_due_editions(session, now)
        due = sending.editions_to_dispatch(session, now)
    if any(settled.values()):
        log.info("reconciled: %s", settled)
    # Enqueued after the commit above, one message per batch the queue holds.
    for edition_id, queued in due.items():
        for _ in range(math.ceil(queued / settings.batch_size)):
            send_batch.delay(edition_id)


@app.task(
    name="digest.send_batch",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=5,
)
def send_batch(edition_id: int) -> None:
    sending.send_batch(sessions, settings, edition_id)
