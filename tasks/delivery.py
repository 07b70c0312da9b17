"""Thin tasks: each translates a message (ids only) into a call on digest/."""

from __future__ import annotations

import math
from datetime import timedelta

from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from digest import sending
from digest.editions import prepare_due_editions
from digest.fetch import Fetcher
from digest.inbound import read_mailbox
from digest.ingest import IngestError, claim_due_sources, ingest_source
from digest.logs import log_context
from digest.mail import TransportUnavailable
from digest.models import Source, utcnow
from digest.social import posting, queue
from digest.sunset import run_sunset
from digest.tracking import purge_personal_data
from tasks.app import app, sessions, settings
from tasks.social import post_social

log = get_task_logger(__name__)
sharing = queue.Sharing.of(settings)


@app.task(name="digest.tick")
def tick() -> None:
    """The beat's heartbeat: settle overdue rows, claim due sources, prepare due editions,
    plan social posts, dispatch ingests, send batches and social posts.

    Duplicate ticks are harmless: preparing is idempotent and a batch task that finds nothing
    to claim does nothing.
    """
    now = utcnow()
    with sessions() as session:
        retried = sending.reconcile(session, now)
        sources = claim_due_sources(session, now)
        prepare_due_editions(session, now)
        due = sending.editions_to_dispatch(
            session, now, settings.batch_size, timedelta(seconds=settings.stall_seconds)
        )
        posting.recover(session, now)
        queue.plan(session, sharing, now)
        social_posts = queue.due_posts(session, now)
    # Enqueued after the commits above. One task per source, so a broken or slow source
    # never holds up the others; one per batch of deliveries to send.
    for source_id in sources:
        ingest.delay(source_id)
    for edition_id, dispatch in due.items():
        for _ in range(dispatch.tasks):
            send_batch.delay(edition_id, dispatch.continuing)
    for edition_id, rows in retried.items():
        if edition_id not in due:
            for _ in range(math.ceil(rows / settings.batch_size)):
                send_batch.delay(edition_id)
    for post_id in social_posts:
        post_social.delay(post_id)


@app.task(
    name="digest.send_batch",
    # A database hiccup or a relay that takes nothing: the batch's rows went back to the queue,
    # so retrying the task is safe. Countdowns stay short (DESIGN rule 4); past the retries the
    # tick's stall detection dispatches the edition again.
    autoretry_for=(OperationalError, TransportUnavailable),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def send_batch(edition_id: int, continuing: bool = False) -> None:
    """Send one batch; a continuing task then enqueues its successor while work remains."""
    sending.send_batch(sessions, settings, edition_id)
    if continuing:
        with sessions() as session:
            more = sending.has_claimable(session, edition_id, utcnow())
        if more:
            send_batch.delay(edition_id, True)


@app.task(name="digest.ingest")
def ingest(source_id: int) -> None:
    with (
        log_context(source_id=source_id),
        sessions() as session,
        Fetcher.from_settings(settings) as fetcher,
    ):
        source = session.get(Source, source_id)
        if source is None:
            return  # removed since the tick claimed it
        try:
            result = ingest_source(session, source, fetcher)
        except IngestError as exc:
            # Recorded on the source with its backoff; the next due tick tries again.
            log.warning("source %s failed: %s", source_id, exc)
            return
        log.info("source %s: %s", source_id, result)


@app.task(name="digest.purge_tracking")
def purge_tracking() -> None:
    """Daily: personal data of tracking events older than DIGEST_TRACKING_RETENTION_DAYS."""
    cutoff = utcnow() - timedelta(days=settings.tracking_retention_days)
    with sessions() as session:
        purged = purge_personal_data(session, cutoff)
    log.info("purged personal data from %d tracking events before %s", purged, cutoff)


@app.task(name="digest.process_inbound")
def process_inbound() -> None:
    """Bounces, complaints and mailto unsubscribes waiting in DIGEST_INBOUND_MAILBOX."""
    if settings.inbound_mailbox is None:
        return
    with sessions() as session:
        handled, outcome = read_mailbox(session, settings.secret_keys, settings.inbound_mailbox)
    if handled:
        log.info("inbound mail: %d messages: %s", handled, dict(outcome))


@app.task(name="digest.sunset")
def sunset() -> None:
    """Daily: re-engage readers who stopped reading, pause those who did not come back."""
    with sessions() as session:
        result = run_sunset(session, settings, utcnow())
    log.info("sunset: %s", result)
