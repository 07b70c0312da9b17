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

from sqlalchemy import exists, update
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

# Long enough for the slowest post (a Bluesky login, a thumbnail upload, the record: a few
# calls of at most TIMEOUT each), short enough that a dead worker's post is read back soon.
TIMEOUT = 20.0
LEASE = timedelta(minutes=3)
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
    ceiling = min(BACKOFF_MAX, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


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


def claim(session: Session, post_id: int, now: datetime) -> datetime | None:
    """Claim the post for this worker; its lease end (the fencing token for the outcome's
    write), or None when it is not claimable (posted, being posted, not due, account held).
    One post per account at a time: platforms count rate limits per account."""
    lease = now + LEASE
    busy = aliased(SocialPost)
    account_free = ~exists().where(
        busy.account_id == SocialPost.account_id,
        busy.state == SocialPostState.POSTING,
        busy.lease_until >= now,
    )
    result = session.execute(
        update(SocialPost)
        .where(
            SocialPost.id == post_id,
            is_due(now),
            SocialPost.account_id.in_(ready_accounts(now)),
            account_free,
        )
        .values(
            state=SocialPostState.POSTING,
            lease_until=lease,
            attempts=SocialPost.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return lease if result.rowcount == 1 else None  # type: ignore[attr-defined]


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
    ``retry_seconds`` (DIGEST_SOCIAL_RETRY_SECONDS), doubling with each attempt; a read-back
    after an unclear failure waits at least that, so the post has time to show."""
    now = now or utcnow()
    with sessions() as session:
        lease = claim(session, post_id, now)
        if lease is None:
            return None
        row = session.get_one(SocialPost, post_id)
        account = session.get_one(SocialAccount, row.account_id)
        story = session.get_one(Story, row.story_id)
        verify = row.verify
        try:
            client: Client = client_for(account, vault, sessions, timeout=timeout)
        except CredentialsUnreadable as exc:
            return _finish(session, row, lease, _reauth(account, str(exc)), now)
        session.commit()  # nothing is held open during the platform's calls
    uploads = PLATFORMS[account.platform].uploads_thumbnail
    post = Post(
        key=post_key(row), text=row.text, card=_card(row, story, images if uploads else None)
    )
    reading_back = verify
    try:
        published: Published | None = client.find_published(post) if verify else None
        reading_back = False
        if published is None:
            published = client.publish(post)
    except PlatformError as exc:
        with sessions() as session:
            row = session.get_one(SocialPost, post_id)
            account = session.get_one(SocialAccount, row.account_id)
            change = _failed(row, account, exc, reading_back, now, retry_seconds)
            return _finish(session, row, lease, change, now)
    except Exception:
        # A bug or an unexpected answer: it may have happened after the post was made.
        with sessions() as session:
            row = session.get_one(SocialPost, post_id)
            _finish(
                session,
                row,
                lease,
                _Change(
                    SocialPostState.QUEUED,
                    "unexpected error while posting; reading back before any retry",
                    verify=True,
                    next_attempt_at=now + backoff(row.attempts, retry_seconds),
                ),
                now,
            )
        raise
    with sessions() as session:
        row = session.get_one(SocialPost, post_id)
        return _finish(
            session,
            row,
            lease,
            _Change(SocialPostState.POSTED, "", published=published),
            now,
        )


@dataclass(frozen=True)
class _Change:
    state: SocialPostState
    message: str
    verify: bool | None = None
    next_attempt_at: datetime | None = None
    published: Published | None = None


def _reauth(account: SocialAccount, message: str) -> _Change:
    account.status = AccountStatus.REAUTH
    account.status_reason = message
    return _Change(SocialPostState.QUEUED, message)


def _failed(
    row: SocialPost,
    account: SocialAccount,
    exc: PlatformError,
    reading_back: bool,
    now: datetime,
    retry_seconds: float,
) -> _Change:
    message = exc.message
    if exc.outcome is Outcome.UNCLEAR:
        if reading_back:
            # The read-back itself cannot tell: only a person can.
            return _Change(SocialPostState.UNKNOWN, message, verify=False)
        return _Change(
            SocialPostState.QUEUED,
            message,
            verify=True,
            next_attempt_at=now
            + max(timedelta(seconds=retry_seconds), backoff(row.attempts, retry_seconds)),
        )
    if exc.outcome is Outcome.REAUTH:
        log.warning("social account %s needs reconnecting: %s", account.id, message)
        return _reauth(account, message)
    if exc.outcome is Outcome.GIVE_UP:
        return _Change(SocialPostState.FAILED, message)
    # RETRY
    if row.attempts >= MAX_ATTEMPTS:
        return _Change(SocialPostState.FAILED, f"gave up after {row.attempts} attempts: {message}")
    wait = backoff(row.attempts, retry_seconds)
    if exc.retry_after is not None:
        # The platform's wait holds for the whole account: its limits are per account.
        asked = timedelta(seconds=exc.retry_after)
        account.retry_at = max(account.retry_at or now, now + asked)
        wait = max(wait, asked)
    return _Change(SocialPostState.QUEUED, message, next_attempt_at=now + wait)


def _finish(
    session: Session, row: SocialPost, lease: datetime, change: _Change, now: datetime
) -> Result:
    """Write the outcome, fenced by the lease: if the lease ran out and another worker took
    the post over meanwhile, this worker's write is dropped (theirs stands)."""
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
    result = session.execute(
        update(SocialPost)
        .where(
            SocialPost.id == row.id,
            SocialPost.state == SocialPostState.POSTING,
            SocialPost.lease_until == lease,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        log.warning(
            "social post %s: lease lost before its outcome (%s) was written", row.id, change.state
        )
        return Result(change.state, "lease lost")
    session.commit()
    log.info("social post %s: %s %s", row.id, change.state.value, change.message)
    return Result(change.state, change.message)
