"""Making one queued post, exactly once.

A post is claimed with one conditional UPDATE (queued → posting, with a lease), the platform is
called outside any transaction, and the outcome is written under the same lease. Where a call
may have reached the platform without our knowing (a timeout, a 5xx on the call that posts, a
worker that died between the call and the write), the row is marked ``verify``: its next
attempt first reads back whether the post landed (``Client.find_published``), and posts only
if it did not. Platforms that cannot read back (Telegram, Discord and Slack webhooks) answer
the read-back with UNCLEAR, and the row becomes ``unknown`` for an editor: never posted twice.

What a failure means comes from each platform's decision table (``PlatformError.outcome``):
RETRY waits (the platform's Retry-After, held for the whole account, or a backoff), REAUTH
stops the account until it is connected again, GIVE_UP fails the post with the platform's
reason.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from digest.config import Settings
from digest.fetch import Allowlist, Fetcher, FetchError
from digest.models import (
    AccountStatus,
    SocialAccount,
    SocialPost,
    SocialPostState,
    Story,
    utcnow,
)
from digest.social.accounts import PLATFORMS, client_for
from digest.social.clients.bluesky import THUMB_MAX_BYTES
from digest.social.compose import excerpt, plain
from digest.social.platform import Client, LinkCard, Outcome, PlatformError, Post, Published
from digest.social.queue import is_due, ready_accounts
from digest.social.vault import CredentialsUnreadable, Vault

log = logging.getLogger(__name__)

# Each call to a platform waits at most this long for each answer.
TIMEOUT = 20.0
# The task that posts is killed after this (tasks/social.py): the slowest post is a Bluesky
# login, a thumbnail upload and the record, a few calls of TIMEOUT each.
TASK_TIME_LIMIT = 150
# A claimed post is taken over (and read back) only after this: well past the task's time
# limit and the next tick, so no post is taken over while its worker may still be calling.
LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 8
BACKOFF_MAX = 3600.0

# A story image for a card: (bytes, media type), or None when it cannot be had.
ImageLoader = Callable[[str], tuple[bytes, str] | None]


def thumbnail_fetcher(settings: Settings) -> Fetcher:
    """A fetcher for story images: public addresses only, capped at the largest thumbnail a
    platform takes."""
    return Fetcher(
        Allowlist.parse(settings.fetch_allowlist),
        max_bytes=THUMB_MAX_BYTES,
        timeout=TIMEOUT,
        contact_url=settings.base_url,
    )


def images_from(fetcher: Fetcher) -> ImageLoader:
    def load(url: str) -> tuple[bytes, str] | None:
        # A card without its thumbnail beats no post: a missing, private or oversized image
        # is left out.
        try:
            fetched = fetcher.get(url)
        except FetchError as exc:
            log.info("story image not used: %s", exc)
            return None
        if not fetched.body:
            return None
        return fetched.body, fetched.content_type.split(";")[0].strip()

    return load


@dataclass(frozen=True)
class Result:
    state: SocialPostState
    message: str = ""


def backoff(attempts: int, base: float) -> timedelta:
    """Exponential with jitter: ``base``, twice that, four times … at most an hour; each
    between half and the whole, so posts that failed together do not retry together."""
    ceiling = read_back_delay(attempts, base).total_seconds()
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


def read_back_delay(attempts: int, base: float) -> timedelta:
    """The whole of the backoff, no jitter: a read-back gives the post time to show."""
    return timedelta(seconds=min(BACKOFF_MAX, base * 2 ** max(0, attempts - 1)))


def recover(session: Session, now: datetime) -> int:
    """Posts still ``posting`` after their lease went through an unclear window (the worker
    died, or hung past its time limit): read back before any retry."""
    result = session.execute(
        update(SocialPost)
        .where(SocialPost.state == SocialPostState.POSTING, SocialPost.lease_until < now)
        .values(
            state=SocialPostState.QUEUED,
            verify=True,
            lease_until=None,
            next_attempt_at=now,
            last_error="the worker stopped while posting; reading back before any retry",
        )
    )
    session.commit()
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def claim(session: Session, post_id: int, now: datetime) -> int | None:
    """Claim the post for this worker; its attempt number (the fence for the outcome's
    write), or None when it is not claimable (posted, being posted, not due, account held).

    One post per account at a time, as platforms count rate limits per account: on
    PostgreSQL the account's row is locked first, so two claims on one account run one after
    the other and the second sees the first's post as busy (SQLite runs one writer anyway).
    """
    account_id = session.scalar(select(SocialPost.account_id).where(SocialPost.id == post_id))
    if account_id is None:
        return None
    session.execute(
        select(SocialAccount.id).where(SocialAccount.id == account_id).with_for_update()
    )
    busy = aliased(SocialPost)
    account_free = ~exists().where(
        busy.account_id == account_id,
        busy.state == SocialPostState.POSTING,
        busy.lease_until >= now,
    )
    attempt = session.scalar(
        update(SocialPost)
        .where(
            SocialPost.id == post_id,
            is_due(now),
            SocialPost.account_id.in_(ready_accounts(now)),
            account_free,
        )
        .values(
            state=SocialPostState.POSTING,
            lease_until=now + LEASE,
            attempts=SocialPost.attempts + 1,
        )
        .returning(SocialPost.attempts)
    )
    session.commit()
    return attempt


def _card(post: SocialPost, story: Story, images: ImageLoader | None) -> LinkCard:
    assert post.share_url is not None
    image = images(story.image_url) if images and story.image_url else None
    return LinkCard(
        url=post.share_url,
        title=plain(story.title),
        description=excerpt(story.summary),
        image_url=story.image_url,
        image=image[0] if image else None,
        image_type=image[1] if image else None,
    )


def post_key(post: SocialPost) -> str:
    """The same for every attempt at one row: idempotency keys and record keys derive from it."""
    return f"account-{post.account_id}/story-{post.story_id}/{post.variant}"


@dataclass(frozen=True)
class _Change:
    state: SocialPostState
    message: str
    verify: bool | None = None
    next_attempt_at: datetime | None = None
    published: Published | None = None
    # The account stops posting until it is connected again.
    reauth: bool = False
    # The platform asked the whole account to wait until then.
    hold_until: datetime | None = None


def publish(
    sessions: sessionmaker[Session],
    vault: Vault,
    post_id: int,
    *,
    images: ImageLoader | None = None,
    now: datetime | None = None,
    timeout: float = TIMEOUT,
    retry_seconds: float = 60.0,
) -> Result | None:
    """Claim and make post ``post_id``; None when it was not claimable. A retry waits about
    ``retry_seconds`` (DIGEST_SOCIAL_RETRY_SECONDS), doubling with each attempt."""
    now = now or utcnow()
    with sessions() as session:
        attempt = claim(session, post_id, now)
        if attempt is None:
            return None
        row = session.get_one(SocialPost, post_id)
        account = session.get_one(SocialAccount, row.account_id)
        story = session.get_one(Story, row.story_id)
        credentials = account.credentials
        stale = row.scheduled_for is not None and now - row.scheduled_for > timedelta(
            minutes=account.expiry_minutes
        )
        try:
            client: Client = client_for(account, vault, sessions, timeout=timeout)
        except CredentialsUnreadable as exc:
            # The keys are wrong (a deploy with the new key missing), not the credentials:
            # nothing was sent; the post waits, and the account is not stopped.
            log.error("social account %s: %s", account.id, exc)
            change = _Change(
                SocialPostState.QUEUED,
                str(exc),
                next_attempt_at=now + backoff(row.attempts, retry_seconds),
            )
            return _finish(sessions, row, attempt, credentials, change, now)
        session.commit()  # nothing is held open during the platform's calls
    if stale and not row.verify:
        # Its time has passed (the claim came from an old broker message, or an editor's
        # post-now long ago): nothing was sent, and a late post is what expiry prevents.
        change = _Change(
            SocialPostState.EXPIRED,
            f"not posted within {account.expiry_minutes} minutes of its time "
            "(the account's expiry)",
        )
        return _finish(sessions, row, attempt, credentials, change, now)
    uploads = PLATFORMS[account.platform].uploads_thumbnail
    post = Post(
        key=post_key(row), text=row.text, card=_card(row, story, images if uploads else None)
    )
    reading_back = row.verify
    try:
        published: Published | None = client.find_published(post) if row.verify else None
        reading_back = False
        if published is None and stale:
            change = _Change(
                SocialPostState.EXPIRED,
                "read back and not found, and past the account's expiry: not posted late",
                verify=False,
            )
            return _finish(sessions, row, attempt, credentials, change, now)
        if published is None:
            published = client.publish(post)
    except PlatformError as exc:
        change = _failed(row, exc, reading_back, now, retry_seconds)
        return _finish(sessions, row, attempt, credentials, change, now)
    except Exception:
        # A bug or an unexpected answer: it may have happened after the post was made.
        change = _Change(
            SocialPostState.QUEUED,
            "unexpected error while posting; reading back before any retry",
            verify=True,
            next_attempt_at=now + read_back_delay(row.attempts, retry_seconds),
        )
        _finish(sessions, row, attempt, credentials, change, now)
        raise
    change = _Change(SocialPostState.POSTED, "", published=published)
    return _finish(sessions, row, attempt, credentials, change, now)


def _failed(
    row: SocialPost,
    exc: PlatformError,
    reading_back: bool,
    now: datetime,
    retry_seconds: float,
) -> _Change:
    message = exc.message
    exhausted = row.attempts >= MAX_ATTEMPTS
    if reading_back and (exc.outcome in (Outcome.UNCLEAR, Outcome.GIVE_UP) or exhausted):
        # The read-back itself cannot tell, and an earlier attempt may have landed: only a
        # person looking at the account can say.
        return _Change(SocialPostState.UNKNOWN, message, verify=False)
    if exc.outcome is Outcome.UNCLEAR:
        return _Change(
            SocialPostState.QUEUED,
            message,
            verify=True,
            next_attempt_at=now + read_back_delay(row.attempts, retry_seconds),
        )
    if exc.outcome is Outcome.REAUTH:
        return _Change(SocialPostState.QUEUED, message, reauth=True)
    if exc.outcome is Outcome.GIVE_UP:
        return _Change(SocialPostState.FAILED, message)
    # RETRY
    if exhausted:
        return _Change(SocialPostState.FAILED, f"gave up after {row.attempts} attempts: {message}")
    wait = backoff(row.attempts, retry_seconds)
    hold = None
    if exc.retry_after is not None:
        # The platform's wait holds for the whole account: its limits are per account.
        hold = now + timedelta(seconds=exc.retry_after)
        wait = max(wait, hold - now)
    return _Change(SocialPostState.QUEUED, message, next_attempt_at=now + wait, hold_until=hold)


def _finish(
    sessions: sessionmaker[Session],
    row: SocialPost,
    attempt: int,
    credentials: bytes | None,
    change: _Change,
    now: datetime,
) -> Result:
    """Write the outcome, fenced by the attempt number: if this worker's lease ran out and
    another worker took the post over, this write is dropped (theirs stands). A success also
    lands on a post that was requeued for a read-back nobody has started: it is the answer
    that read-back would find."""
    values: dict[str, object] = {
        "state": change.state,
        "lease_until": None,
        "last_error": change.message or None,
    }
    if change.verify is not None:
        values["verify"] = change.verify
    if change.state is SocialPostState.QUEUED:
        values["next_attempt_at"] = change.next_attempt_at
    if change.published is not None:
        values.update(
            remote_id=change.published.remote_id[:200],
            url=change.published.url,
            posted_at=now,
            verify=False,
        )
    ours = or_(
        SocialPost.state == SocialPostState.POSTING,
        and_(
            change.published is not None,
            SocialPost.state == SocialPostState.QUEUED,
            SocialPost.verify.is_(True),
        ),
    )
    with sessions() as session:
        result = session.execute(
            update(SocialPost)
            .where(SocialPost.id == row.id, SocialPost.attempts == attempt, ours)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            log.warning(
                "social post %s: taken over before its outcome (%s) was written",
                row.id,
                change.state.value,
            )
            return Result(change.state, "taken over by another worker")
        account = update(SocialAccount).where(SocialAccount.id == row.account_id)
        if change.reauth:
            # Only over the credentials this attempt used: a reconnect meanwhile stands.
            log.warning("social account %s needs reconnecting: %s", row.account_id, change.message)
            session.execute(
                account.where(
                    SocialAccount.credentials == credentials,
                    SocialAccount.status == AccountStatus.ACTIVE,
                ).values(status=AccountStatus.REAUTH, status_reason=change.message)
            )
        if change.hold_until is not None:
            session.execute(
                account.where(
                    or_(
                        SocialAccount.retry_at.is_(None),
                        SocialAccount.retry_at < change.hold_until,
                    )
                ).values(retry_at=change.hold_until)
            )
        session.commit()
    log.info("social post %s: %s %s", row.id, change.state.value, change.message)
    return Result(change.state, change.message)
