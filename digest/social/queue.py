"""The social queue: what is posted to which account, and when.

Rules, per account, in its time zone:
- a new must-read (pinned by an editor, or on the site's Must-Reads list and fresh) is queued
  at once;
- at each posting slot the newest story not yet shared there is queued; when there is none,
  an evergreen story not shared for ``reshare_days`` is shared again;
- no more than ``daily_cap`` posts a local day, must-reads included;
- a post not made within ``expiry_minutes`` of its time expires instead of going out late, so
  an account that was stopped for a day does not get a day's backlog at once;
- with ``approval`` on, posts wait for an editor.

Rows are written before any call to a platform (DESIGN rule 1): one per (story, account,
variant), ``variant`` "default" for a story's first share there. Each row gets its tracked
link and its text, composed and checked against the platform's rule, in the same
transaction. Planning locks each account's row while it plans (PostgreSQL; SQLite has one
writer anyway), so two ticks at once cannot both fill a slot or overrun the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.db import upsert_insert
from digest.models import (
    AccountStatus,
    Link,
    SocialAccount,
    SocialPost,
    SocialPostKind,
    SocialPostState,
    Story,
)
from digest.selection import must_reads
from digest.social.accounts import PLATFORMS, AccountError, load_account, parse_slots
from digest.social.compose import compose
from digest.social.text_rules import TooLong
from digest.tokens import TokenSigner
from digest.tracking import with_utm

log = logging.getLogger(__name__)

# A story is "latest" for this long after publication; a must-read from the site's list for
# this long after we first saw it (a pin counts whatever the story's age).
FRESH = timedelta(hours=24)
# How far down the must-read list one tick looks.
MUST_READ_DEPTH = 20

# States that take a place in the day's cap.
COUNTED = (
    SocialPostState.AWAITING_APPROVAL,
    SocialPostState.QUEUED,
    SocialPostState.POSTING,
    SocialPostState.POSTED,
    SocialPostState.UNKNOWN,
)
WAITING = (SocialPostState.AWAITING_APPROVAL, SocialPostState.QUEUED)
MAY_HAVE_LANDED = (
    "an earlier attempt may have landed and was not read back: look at the account before "
    "posting it again"
)


class QueueError(ValueError):
    """An editor's request cannot be carried out; the message says why and what to do."""


class StoryNotFound(QueueError, LookupError):
    """There is no story with this id."""


@dataclass(frozen=True)
class Sharing:
    """What turns a link row into the URL that is shared: the public base URL and the
    signer of click tokens."""

    base_url: str
    signer: TokenSigner

    @classmethod
    def of(cls, settings: Settings) -> Sharing:
        return cls(settings.base_url, TokenSigner(settings.secret_keys))

    def url(self, link_id: int) -> str:
        return f"{self.base_url.rstrip('/')}/c/{self.signer.click_token(link_id, None)}"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _slot_times(account: SocialAccount) -> tuple[time, ...]:
    try:
        return parse_slots(account.slots)
    except AccountError:
        # Settings are checked when saved; a row edited by hand posts must-reads only.
        log.warning("account %s has unreadable slots %r", account.id, account.slots)
        return ()


def latest_slot(account: SocialAccount, now: datetime) -> datetime | None:
    """The most recent posting slot at or before ``now`` (UTC), or None without slots."""
    slots = _slot_times(account)
    zone = _zone(account.timezone)
    today = now.astimezone(zone).date()
    for day in (today, today - timedelta(days=1)):
        for slot in reversed(slots):
            at = datetime.combine(day, slot, tzinfo=zone).astimezone(UTC)
            if at <= now:
                return at
    return None


def upcoming_slots(account: SocialAccount, now: datetime, count: int) -> list[datetime]:
    slots = _slot_times(account)
    zone = _zone(account.timezone)
    today = now.astimezone(zone).date()
    found: list[datetime] = []
    for offset in range(0, 3):
        for slot in slots:
            at = datetime.combine(today + timedelta(days=offset), slot, tzinfo=zone)
            at = at.astimezone(UTC)
            if at > now and len(found) < count:
                found.append(at)
    return found


def _local_day(account: SocialAccount, now: datetime) -> tuple[datetime, datetime]:
    zone = _zone(account.timezone)
    day = now.astimezone(zone).date()
    start = datetime.combine(day, time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def posts_today(session: Session, account: SocialAccount, now: datetime) -> int:
    start, end = _local_day(account, now)
    return (
        session.scalar(
            select(func.count())
            .select_from(SocialPost)
            .where(
                SocialPost.account_id == account.id,
                SocialPost.state.in_(COUNTED),
                SocialPost.scheduled_for >= start,
                SocialPost.scheduled_for < end,
            )
        )
        or 0
    )


def _shared(account_id: int) -> object:
    """Whether the story has any row on the account (any variant, any state)."""
    return exists().where(SocialPost.account_id == account_id, SocialPost.story_id == Story.id)


def _must_reads(session: Session, account: SocialAccount, now: datetime) -> list[Story]:
    candidates = must_reads(session, now, MUST_READ_DEPTH)
    if not candidates:
        return []
    taken = set(
        session.scalars(
            select(SocialPost.story_id).where(
                SocialPost.account_id == account.id,
                SocialPost.story_id.in_([s.id for s in candidates]),
            )
        )
    )
    # Only what arrived while the account was active: connecting or resuming it must not post
    # a day's must-reads at once.
    since = max(now - FRESH, account.active_since or account.created_at)
    pinned_since = account.active_since or account.created_at
    return [
        story
        for story in candidates
        if story.id not in taken
        and (
            story.first_seen_at >= since
            or (
                story.pinned_until is not None
                and story.pinned_until > now
                and story.first_seen_at >= pinned_since
            )
        )
    ]


def _newest(session: Session, account: SocialAccount, now: datetime) -> Story | None:
    return session.scalars(
        select(Story)
        .where(
            Story.published_at > now - FRESH,
            Story.published_at <= now,
            ~_shared(account.id),  # type: ignore[operator]
        )
        .order_by(Story.published_at.desc(), Story.id.desc())
        .limit(1)
    ).first()


def _evergreen(session: Session, account: SocialAccount, now: datetime) -> tuple[Story, str] | None:
    """The evergreen story shared least recently (never first), if its last share is older
    than the account's ``reshare_days``; with the variant its new row takes."""
    if not account.reshare_days:
        return None
    # Every row counts as a share for the interval, whatever became of it (a failed or
    # expired one is not retried daily), and a story an editor skipped is not brought back.
    last = (
        select(
            SocialPost.story_id,
            func.max(func.coalesce(SocialPost.posted_at, SocialPost.scheduled_for)).label("at"),
        )
        .where(SocialPost.account_id == account.id)
        .group_by(SocialPost.story_id)
        .subquery()
    )
    skipped = exists().where(
        SocialPost.account_id == account.id,
        SocialPost.story_id == Story.id,
        SocialPost.state == SocialPostState.SKIPPED,
    )
    row = session.execute(
        select(Story, last.c.at)
        .outerjoin(last, last.c.story_id == Story.id)
        .where(
            Story.evergreen.is_(True),
            Story.published_at <= now,
            ~skipped,
            or_(last.c.at.is_(None), last.c.at < now - timedelta(days=account.reshare_days)),
        )
        .order_by(last.c.at.is_not(None), last.c.at, Story.published_at.desc(), Story.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    story = row[0]
    first = session.scalar(
        select(SocialPost.id).where(
            SocialPost.account_id == account.id,
            SocialPost.story_id == story.id,
            SocialPost.variant == "default",
        )
    )
    zone = _zone(account.timezone)
    return story, "default" if first is None else f"reshare-{now.astimezone(zone):%Y%m%d}"


def write_post(
    session: Session,
    sharing: Sharing,
    account: SocialAccount,
    story: Story,
    *,
    kind: SocialPostKind,
    variant: str,
    scheduled_for: datetime,
    now: datetime,
) -> SocialPost | None:
    """Write the post row with its tracked link and its text; None when the row exists
    already (a concurrent tick wrote it). A text that cannot fit is stored as a failed row
    with the reason, so the editor sees it and the planner does not try again every tick."""
    approved = kind is SocialPostKind.MANUAL or not account.approval
    post_id = session.scalar(
        upsert_insert(session, SocialPost)
        .values(
            story_id=story.id,
            account_id=account.id,
            variant=variant,
            kind=kind,
            state=SocialPostState.QUEUED if approved else SocialPostState.AWAITING_APPROVAL,
            text="",
            scheduled_for=scheduled_for,
            approved_at=now if approved and kind is SocialPostKind.MANUAL else None,
            attempts=0,
            verify=False,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(SocialPost.id)
    )
    if post_id is None:
        return None
    link = Link(
        story_id=story.id,
        social_post_id=post_id,
        url=with_utm(story.canonical_url, account.platform, "social", account.utm_campaign),
        created_at=now,
    )
    session.add(link)
    session.flush()
    post = session.get_one(SocialPost, post_id)
    post.share_url = sharing.url(link.id)
    _compose_into(post, account, story)
    return post


def _compose_into(post: SocialPost, account: SocialAccount, story: Story) -> None:
    assert post.share_url is not None
    try:
        post.text = compose(
            account.platform,
            story,
            post.share_url,
            kind=post.kind,
            limit=account.max_characters,
        ).text
    except TooLong as exc:
        post.state = SocialPostState.FAILED
        post.last_error = (
            f"{exc}: shorten templates/social/{account.platform}.txt or the story's title"
        )


def plan(session: Session, sharing: Sharing, now: datetime) -> int:
    """Expire stale posts and write the rows now due on every account; returns how many rows
    were written. Commits once per account."""
    written = 0
    for account_id in session.scalars(select(SocialAccount.id).order_by(SocialAccount.id)):
        account = session.scalars(
            select(SocialAccount)
            .where(SocialAccount.id == account_id)
            .with_for_update(skip_locked=True)
        ).first()
        if account is None:
            continue  # another tick is planning this account
        try:
            _expire(session, account, now)
            if account.status is AccountStatus.ACTIVE:
                written += _plan_account(session, sharing, account, now)
            session.commit()
        except Exception:
            # One account's trouble (a row edited by hand, a bug) must not stop the others,
            # nor the tick's email work that runs after this.
            session.rollback()
            log.exception(
                "planning social account %s failed; the next tick tries again", account_id
            )
    return written


def _expire(session: Session, account: SocialAccount, now: datetime) -> None:
    minutes = account.expiry_minutes
    stale = and_(
        SocialPost.account_id == account.id,
        SocialPost.state.in_(WAITING),
        SocialPost.scheduled_for < now - timedelta(minutes=minutes),
    )
    session.execute(
        update(SocialPost)
        .where(stale, SocialPost.verify.is_(False))
        .values(
            state=SocialPostState.EXPIRED,
            last_error=f"not posted within {minutes} minutes of its time (the account's expiry)",
        )
    )
    # An earlier attempt of these may have landed, and there is no time left to read back.
    session.execute(
        update(SocialPost)
        .where(stale, SocialPost.verify.is_(True))
        .values(state=SocialPostState.UNKNOWN, last_error=MAY_HAVE_LANDED)
    )


def _plan_account(session: Session, sharing: Sharing, account: SocialAccount, now: datetime) -> int:
    budget = account.daily_cap - posts_today(session, account, now)
    written = 0
    for story in _must_reads(session, account, now):
        if budget <= 0:
            break
        if write_post(
            session,
            sharing,
            account,
            story,
            kind=SocialPostKind.MUST_READ,
            variant="default",
            scheduled_for=now,
            now=now,
        ):
            budget -= 1
            written += 1
    slot = latest_slot(account, now)
    expiry = timedelta(minutes=account.expiry_minutes)
    if slot is None or now - slot >= expiry:
        return written
    # The slot is taken now whatever fills it (a story that arrives later waits for the next),
    # by one conditional UPDATE: on SQLite, where the account's row is not locked, two ticks
    # at once cannot both take it.
    taken = session.execute(
        update(SocialAccount)
        .where(
            SocialAccount.id == account.id,
            or_(SocialAccount.last_slot_at.is_(None), SocialAccount.last_slot_at < slot),
        )
        .values(last_slot_at=slot)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return written
    # The slot's own local day: a slot from before midnight counts against that day's cap.
    if account.daily_cap - posts_today(session, account, slot) <= 0:
        return written
    newest = _newest(session, account, now)
    if newest is not None:
        choice: tuple[Story, str, SocialPostKind] | None = (
            newest,
            "default",
            SocialPostKind.LATEST,
        )
    else:
        evergreen = _evergreen(session, account, now)
        choice = evergreen and (evergreen[0], evergreen[1], SocialPostKind.EVERGREEN)
    if choice is not None:
        story, variant, kind = choice
        if write_post(
            session,
            sharing,
            account,
            story,
            kind=kind,
            variant=variant,
            scheduled_for=slot,
            now=now,
        ):
            written += 1
    return written


def due_posts(session: Session, now: datetime, limit: int = 100) -> list[int]:
    """Rows that may be claimed now, oldest first; the task claims each atomically."""
    return list(
        session.scalars(
            select(SocialPost.id)
            .where(is_due(now), SocialPost.account_id.in_(ready_accounts(now)))
            .order_by(SocialPost.scheduled_for, SocialPost.id)
            .limit(limit)
        )
    )


def is_due(now: datetime) -> ColumnElement[bool]:
    """A post is due: queued, its time come, no backoff pending."""
    return and_(
        SocialPost.state == SocialPostState.QUEUED,
        SocialPost.scheduled_for <= now,
        or_(SocialPost.next_attempt_at.is_(None), SocialPost.next_attempt_at <= now),
    )


def ready_accounts(now: datetime) -> Select[tuple[int]]:
    """Accounts that may post: active, and not told by their platform to wait."""
    return select(SocialAccount.id).where(
        SocialAccount.status == AccountStatus.ACTIVE,
        or_(SocialAccount.retry_at.is_(None), SocialAccount.retry_at <= now),
    )


# -- editors' actions ---------------------------------------------------------------------------


def approve(session: Session, post_ids: Sequence[int], now: datetime) -> int:
    """Approve waiting posts: they go out at their time (at once if it has passed, within the
    account's expiry). Returns how many were waiting."""
    result = session.execute(
        update(SocialPost)
        .where(
            SocialPost.id.in_(post_ids),
            SocialPost.state == SocialPostState.AWAITING_APPROVAL,
        )
        .values(state=SocialPostState.QUEUED, approved_at=now)
    )
    session.commit()
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def skip(session: Session, post_ids: Sequence[int], now: datetime) -> int:
    """Turn down posts that have not gone out. Returns how many were still waiting. One whose
    earlier attempt may have landed becomes ``unknown``: only a look at the account can tell."""
    waiting = and_(SocialPost.id.in_(post_ids), SocialPost.state.in_(WAITING))
    skipped = session.execute(
        update(SocialPost)
        .where(waiting, SocialPost.verify.is_(False))
        .values(
            state=SocialPostState.SKIPPED,
            last_error=f"skipped by an editor at {now:%Y-%m-%d %H:%M} UTC",
        )
    )
    unknown = session.execute(
        update(SocialPost)
        .where(waiting, SocialPost.verify.is_(True))
        .values(state=SocialPostState.UNKNOWN, last_error=MAY_HAVE_LANDED)
    )
    session.commit()
    return skipped.rowcount + unknown.rowcount  # type: ignore[attr-defined, no-any-return]


def post_now(
    session: Session,
    sharing: Sharing,
    account_id: int,
    story_id: int,
    now: datetime,
    *,
    again: bool = False,
) -> SocialPost:
    """Queue ``story`` on the account for right away, outside slots and cap: an editor's
    decision. A story already shared there is posted again only with ``again``; a post that
    failed, expired or was skipped is composed afresh and queued."""
    account = load_account(session, account_id)
    story = session.get(Story, story_id)
    if story is None:
        raise StoryNotFound(f"there is no story {story_id}")
    if account.status is not AccountStatus.ACTIVE:
        raise QueueError(
            f"account {account.id} is {account.status.value}"
            + (f" ({account.status_reason})" if account.status_reason else "")
            + ": connect it again or resume it first"
        )
    last = session.scalars(
        select(SocialPost)
        .where(SocialPost.account_id == account.id, SocialPost.story_id == story.id)
        .order_by(SocialPost.created_at.desc(), SocialPost.id.desc())
        .limit(1)
    ).first()
    if last is not None and not again:
        if last.state is SocialPostState.POSTED:
            raise QueueError(
                f"story {story.id} was posted to this account at {last.posted_at:%Y-%m-%d %H:%M} "
                f"UTC ({last.url or last.remote_id}); use --again to post it once more"
            )
        if last.state is SocialPostState.UNKNOWN:
            raise QueueError(
                f"whether post {last.id} landed is unknown ({last.last_error}); look at the "
                "account, and if it is not there, use --again"
            )
        if last.state is SocialPostState.POSTING:
            raise QueueError(f"post {last.id} is being posted right now")
        waiting = last.state in WAITING
        values: dict[str, object] = {
            "state": SocialPostState.QUEUED,
            "scheduled_for": now,
            "approved_at": now,
            "next_attempt_at": None,
        }
        if not waiting:
            values.update(attempts=0, last_error=None)
        # One conditional UPDATE, not a read then a write: meanwhile the row may have been
        # approved, claimed or finished, and it must never be queued again while a worker
        # posts it. Failed, expired and skipped rows never carry ``verify`` (a row that may
        # have landed is unknown instead), so composing them afresh is safe; a waiting row
        # keeps its text, which an earlier attempt may have sent.
        changed = session.execute(
            update(SocialPost)
            .where(
                SocialPost.id == last.id,
                SocialPost.state == last.state,
                SocialPost.verify.is_(last.verify) if waiting else SocialPost.verify.is_(False),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            raise QueueError(f"post {last.id} changed while this request ran; try again")
        session.refresh(last)
        if not waiting:
            _compose_into(last, account, story)
        return _committed(session, last)
    variant = "default" if last is None else f"again-{now:%Y%m%d%H%M%S}"
    post = write_post(
        session,
        sharing,
        account,
        story,
        kind=SocialPostKind.MANUAL,
        variant=variant,
        scheduled_for=now,
        now=now,
    )
    if post is None:
        raise QueueError("another request queued this post at the same moment")
    return _committed(session, post)


def _committed(session: Session, post: SocialPost) -> SocialPost:
    # A post that cannot be composed is kept as a failed row, its reason visible in the queue.
    session.commit()
    if post.state is SocialPostState.FAILED:
        raise QueueError(post.last_error or "the post cannot be composed")
    return post


# -- reading the queue --------------------------------------------------------------------------

# Finished posts stay in the listing this long.
RECENT = timedelta(days=2)


@dataclass(frozen=True)
class QueueEntry:
    id: int
    account_id: int
    account: str
    story_id: int
    title: str
    kind: str
    state: str
    scheduled_for: datetime | None
    posted_at: datetime | None
    attempts: int
    text: str
    url: str | None
    last_error: str | None


@dataclass(frozen=True)
class AccountOutlook:
    id: int
    account: str
    status: str
    status_reason: str | None
    retry_at: datetime | None
    posts_today: int
    daily_cap: int
    next_slots: list[datetime]
    # The story the next slot would take if it came now.
    next_story: str | None


def account_name(account: SocialAccount) -> str:
    return f"{account.platform}:{account.handle}"


def entries(session: Session, now: datetime, account_id: int | None = None) -> list[QueueEntry]:
    """Posts waiting or under way, and those finished in the last two days, by time."""
    query = (
        select(SocialPost, SocialAccount, Story.title)
        .join(SocialAccount, SocialAccount.id == SocialPost.account_id)
        .join(Story, Story.id == SocialPost.story_id)
        .where(
            or_(
                SocialPost.state.in_((*WAITING, SocialPostState.POSTING, SocialPostState.UNKNOWN)),
                SocialPost.scheduled_for >= now - RECENT,
            )
        )
        .order_by(SocialPost.scheduled_for, SocialPost.id)
    )
    if account_id is not None:
        query = query.where(SocialPost.account_id == account_id)
    return [
        QueueEntry(
            id=post.id,
            account_id=account.id,
            account=account_name(account),
            story_id=post.story_id,
            title=title,
            kind=post.kind.value,
            state=post.state.value,
            scheduled_for=post.scheduled_for,
            posted_at=post.posted_at,
            attempts=post.attempts,
            text=post.text,
            url=post.url,
            last_error=post.last_error,
        )
        for post, account, title in session.execute(query)
    ]


def outlook(session: Session, now: datetime, account_id: int | None = None) -> list[AccountOutlook]:
    """Per account: its state, today's count against the cap, the next slots and the story
    the next slot would take (evergreen re-shares aside)."""
    query = select(SocialAccount).order_by(SocialAccount.id)
    if account_id is not None:
        query = query.where(SocialAccount.id == account_id)
    result = []
    for account in session.scalars(query):
        newest = _newest(session, account, now)
        result.append(
            AccountOutlook(
                id=account.id,
                account=account_name(account),
                status=account.status.value,
                status_reason=account.status_reason,
                retry_at=account.retry_at if account.retry_at and account.retry_at > now else None,
                posts_today=posts_today(session, account, now),
                daily_cap=account.daily_cap,
                next_slots=upcoming_slots(account, now, 3),
                next_story=newest.title if newest else None,
            )
        )
    return result


@dataclass(frozen=True)
class Preview:
    target: str
    text: str
    # How the platform counts it, e.g. "212 of 500 graphemes".
    length: str
    fits: bool


# A link id of the size a busy site reaches: its token is as long as a real one.
PREVIEW_LINK_ID = 10_000_000


def previews(session: Session, sharing: Sharing, story_id: int) -> list[Preview]:
    """The story as each connected account would post it, or as each platform would when no
    account is connected; a text that cannot fit shows the platform's complaint."""
    story = session.get(Story, story_id)
    if story is None:
        raise StoryNotFound(f"there is no story {story_id}")
    url = sharing.url(PREVIEW_LINK_ID)
    accounts = list(session.scalars(select(SocialAccount).order_by(SocialAccount.id)))
    targets = [(account_name(a), a.platform, a.max_characters) for a in accounts] or [
        (platform, platform, None) for platform in PLATFORMS
    ]
    result = []
    for name, platform, limit in targets:
        try:
            composed = compose(platform, story, url, kind=SocialPostKind.LATEST, limit=limit)
        except TooLong as exc:
            result.append(Preview(name, "", str(exc), fits=False))
            continue
        length = composed.length
        result.append(
            Preview(
                name,
                composed.text,
                f"{length.value:,} of {length.limit:,} {length.unit}",
                fits=True,
            )
        )
    return result
