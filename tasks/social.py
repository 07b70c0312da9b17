"""Thin tasks for social posting: each translates a message (a post id) into a call on
digest.social."""

from __future__ import annotations

from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from digest.logs import log_context
from digest.social import posting
from digest.social.vault import Vault
from tasks.app import app, sessions, settings

log = get_task_logger(__name__)
vault = Vault(settings.secret_keys)


@app.task(
    name="digest.post_social",
    # The claim or the outcome's write met a database hiccup: a claim that did not commit left
    # the post queued, and one that did is read back after its lease; retrying is safe.
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
    # Well inside the post's lease (digest.social.posting.LEASE): a post is never taken over
    # while this task may still be calling the platform. The soft limit lets it note that
    # it was stopped mid-call (read back before any retry).
    time_limit=posting.TASK_TIME_LIMIT,
    soft_time_limit=posting.TASK_TIME_LIMIT - 20,
)
def post_social(post_id: int) -> None:
    with log_context(social_post_id=post_id), posting.thumbnail_fetcher(settings) as fetcher:
        result = posting.publish(
            sessions,
            vault,
            post_id,
            images=posting.images_from(fetcher),
            retry_seconds=settings.social_retry_seconds,
        )
    if result is not None:
        log.info("social post %s: %s", post_id, result.state.value)
