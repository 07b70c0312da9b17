"""The social queue on SQLite and PostgreSQL: what is queued where and when (must-reads at
once, the newest story by slot, the daily cap, expiry, approval, evergreen re-shares), and the
posting of each row exactly once against local fakes of the platforms, through unclear
failures, rate limits, revoked tokens and a worker that died mid-post."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.models import (
    AccountStatus,
    Link,
    SocialAccount,
    SocialPost,
    SocialPostKind,
    SocialPostState,
    Story,
)
from digest.social import posting, queue
from digest.social.accounts import AccountError, PostingSettings, connect, update_settings
from digest.social.platform import Published
from digest.social.queue import QueueError, Sharing
from digest.social.vault import Vault
from digest.tokens import TokenSigner
from tests.social_fakes.mastodon import MastodonFake
from tests.social_fakes.telegram import Channel, TelegramFake

KEYS = ("social-queue-test-key",)
SHARING = Sharing("https://digest.example.com", TokenSigner(KEYS))
VAULT = Vault(KEYS)
# A Wednesday, 10:05 in Berlin (UTC+1 in November).
NOW = datetime(2026, 11, 25, 9, 5, tzinfo=UTC)
# Accounts were connected well before the stories of these tests.
CONNECTED = NOW - timedelta(days=30)
TELEGRAM_TOKEN = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

_urls = itertools.count(1)


def story(
    session: Session,
    *,
    age: timedelta = timedelta(hours=1),
    title: str = "Harbour bridge reopens",
    pinned: bool = False,
    evergreen: bool = False,
) -> Story:
    made = Story(
        canonical_url=f"https://news.example.com/story-{next(_urls)}",
        title=title,
        summary="After two years of works, the bridge carries traffic again. " * 3,
        section="City",
        published_at=NOW - age,
        first_seen_at=NOW - age,
        pinned_until=NOW + timedelta(days=1) if pinned else None,
        evergreen=evergreen,
    )
    session.add(made)
    session.flush()
    return made


def account(
    session: Session,
    platform: str = "mastodon",
    *,
    base_url: str = "https://example.social",
    credentials: dict[str, str] | None = None,
    **settings: object,
) -> SocialAccount:
    made = connect(
        session,
        VAULT,
        platform,
        f"news-{next(_urls)}",
        credentials or {"access_token": "token"},
        base_url=base_url,
        settings=PostingSettings(timezone="Europe/Berlin", **settings),  # type: ignore[arg-type]
        now=CONNECTED,
    )
    session.commit()
    return made


def posts(session: Session, account_id: int) -> list[SocialPost]:
    session.expire_all()
    return list(
        session.scalars(
            select(SocialPost).where(SocialPost.account_id == account_id).order_by(SocialPost.id)
        )
    )


# -- planning ----------------------------------------------------------------------------------


def test_a_must_read_is_queued_at_once_with_a_tracked_link_and_its_text(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session)
        pinned = story(session, pinned=True, age=timedelta(days=5))
        session.commit()
        assert queue.plan(session, SHARING, NOW) == 1
        (post,) = posts(session, acct.id)
        assert (post.kind, post.state, post.variant) == (
            SocialPostKind.MUST_READ,
            SocialPostState.QUEUED,
            "default",
        )
        assert post.scheduled_for == NOW
        link = session.scalars(select(Link).where(Link.social_post_id == post.id)).one()
        assert link.story_id == pinned.id
        assert link.url == (
            f"{pinned.canonical_url}?utm_source=mastodon&utm_medium=social&utm_campaign=social"
        )
        assert post.share_url == SHARING.url(link.id)
        assert post.share_url in post.text
        assert post.text.startswith("Must read: Harbour bridge reopens")
        # A second tick finds nothing new.
        assert queue.plan(session, SHARING, NOW + timedelta(minutes=1)) == 0
        assert queue.due_posts(session, NOW) == [post.id]


def test_a_slot_takes_the_newest_story_once(any_sessions) -> None:
    with any_sessions() as session:
        # 10:00 Berlin is 09:00 UTC: five minutes ago.
        acct = account(session, slots="10:00,14:00")
        story(session, age=timedelta(hours=3), title="Older")
        newest = story(session, age=timedelta(minutes=30), title="Newest")
        story(session, age=timedelta(days=2), title="Stale")
        session.commit()
        assert queue.plan(session, SHARING, NOW) == 1
        (post,) = posts(session, acct.id)
        assert (post.story_id, post.kind) == (newest.id, SocialPostKind.LATEST)
        assert post.scheduled_for == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
        # The slot is taken: a later tick before 14:00 adds nothing, however many stories.
        story(session, age=timedelta(minutes=1))
        session.commit()
        assert queue.plan(session, SHARING, NOW + timedelta(minutes=30)) == 0
        # At 14:00 Berlin the next newest unshared story goes.
        assert queue.plan(session, SHARING, datetime(2026, 11, 25, 13, 1, tzinfo=UTC)) == 1
        first, second = posts(session, acct.id)
        assert first.story_id == newest.id and second.story_id != newest.id


def test_a_slot_long_past_is_not_filled_late(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, slots="07:00", expiry_minutes=60)
        story(session, age=timedelta(minutes=30))
        session.commit()
        # 07:00 Berlin was 3 hours ago, beyond the account's hour of expiry.
        assert queue.plan(session, SHARING, NOW) == 0
        assert posts(session, acct.id) == []


def test_the_daily_cap_counts_must_reads_and_holds(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, daily_cap=2, slots="10:00")
        for _ in range(3):
            story(session, pinned=True)
        story(session, age=timedelta(minutes=5))
        session.commit()
        assert queue.plan(session, SHARING, NOW) == 2
        assert [p.kind for p in posts(session, acct.id)] == [SocialPostKind.MUST_READ] * 2
        assert queue.plan(session, SHARING, NOW + timedelta(hours=1)) == 0
        # Just after midnight in Berlin there is room again: the third must-read goes.
        assert queue.plan(session, SHARING, NOW + timedelta(hours=15)) == 1


def test_posts_not_made_within_the_expiry_expire(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, expiry_minutes=30)
        story(session, pinned=True)
        session.commit()
        queue.plan(session, SHARING, NOW)
        queue.plan(session, SHARING, NOW + timedelta(minutes=31))
        (post,) = posts(session, acct.id)
        assert post.state is SocialPostState.EXPIRED
        assert "30 minutes" in (post.last_error or "")
        assert queue.due_posts(session, NOW + timedelta(minutes=31)) == []


def test_with_approval_posts_wait_for_an_editor(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, approval=True)
        story(session, pinned=True)
        session.commit()
        queue.plan(session, SHARING, NOW)
        (post,) = posts(session, acct.id)
        assert post.state is SocialPostState.AWAITING_APPROVAL
        assert queue.due_posts(session, NOW) == []
        assert queue.approve(session, [post.id], NOW) == 1
        assert queue.due_posts(session, NOW) == [post.id]
        assert queue.skip(session, [post.id], NOW) == 1
        assert queue.due_posts(session, NOW) == []


def test_evergreen_stories_are_shared_again_after_the_interval(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, slots="10:00", reshare_days=30)
        old = story(session, age=timedelta(days=400), evergreen=True, title="Guide to the city")
        session.add(
            SocialPost(
                story_id=old.id,
                account_id=acct.id,
                state=SocialPostState.POSTED,
                scheduled_for=NOW - timedelta(days=31),
                posted_at=NOW - timedelta(days=31),
            )
        )
        session.commit()
        # No fresh story: the slot re-shares the evergreen one under a new variant.
        assert queue.plan(session, SHARING, NOW) == 1
        reshare = posts(session, acct.id)[-1]
        assert (reshare.story_id, reshare.kind, reshare.variant) == (
            old.id,
            SocialPostKind.EVERGREEN,
            "reshare-20261125",
        )
        reshare.state, reshare.posted_at = SocialPostState.POSTED, NOW
        session.commit()
        # Not again at the next slot: its last share is now today.
        assert queue.plan(session, SHARING, NOW + timedelta(days=1)) == 0


def test_a_text_that_cannot_fit_is_kept_failed_with_the_reason(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, max_characters=40)
        story(session, pinned=True, title="A title far too long for a forty character limit")
        session.commit()
        queue.plan(session, SHARING, NOW)
        (post,) = posts(session, acct.id)
        assert post.state is SocialPostState.FAILED
        assert "Mastodon:" in (post.last_error or "") and "social/mastodon.txt" in (
            post.last_error or ""
        )


def test_post_now_refuses_a_second_post_unless_asked(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session)
        shared = story(session)
        session.commit()
        first = queue.post_now(session, SHARING, acct.id, shared.id, NOW)
        assert (first.variant, first.kind, first.state) == (
            "default",
            SocialPostKind.MANUAL,
            SocialPostState.QUEUED,
        )
        first.state = SocialPostState.POSTED
        first.posted_at = NOW
        session.commit()
        with pytest.raises(QueueError, match="--again"):
            queue.post_now(session, SHARING, acct.id, shared.id, NOW)
        again = queue.post_now(session, SHARING, acct.id, shared.id, NOW, again=True)
        assert again.variant.startswith("again-") and again.id != first.id


# -- posting -----------------------------------------------------------------------------------


@pytest.fixture
def masto() -> Iterator[MastodonFake]:
    fake = MastodonFake(token="masto-secret-token-1").start()
    yield fake
    fake.stop()


@pytest.fixture
def telegram() -> Iterator[TelegramFake]:
    fake = TelegramFake(TELEGRAM_TOKEN, [Channel(-1001, "examplenews", "Example News")]).start()
    yield fake
    fake.stop()


def _queued(sessions: sessionmaker[Session], acct_kwargs: dict[str, object]) -> tuple[int, int]:
    with sessions() as session:
        acct = account(session, **acct_kwargs)  # type: ignore[arg-type]
        made = story(session, pinned=True)
        session.commit()
        post = queue.post_now(session, SHARING, acct.id, made.id, NOW)
        return acct.id, post.id


def _masto_account(fake: MastodonFake) -> dict[str, object]:
    return {"base_url": fake.url, "credentials": {"access_token": fake.token}}


def test_a_post_lands_once_and_records_where(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.POSTED
    assert posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5) is None
    assert len(masto.statuses) == 1
    with any_sessions() as session:
        post = session.get_one(SocialPost, post_id)
        assert post.remote_id == masto.statuses[0].id
        assert post.posted_at == NOW and post.attempts == 1 and not post.verify


def test_an_unclear_failure_is_read_back_before_any_retry(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    # The status is stored, then the server answers 502: the client cannot know.
    masto.fail_next(status=502, after_effect=True, method="POST")
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.QUEUED
    with any_sessions() as session:
        post = session.get_one(SocialPost, post_id)
        assert post.verify and post.next_attempt_at is not None
        later = post.next_attempt_at
    assert posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5) is None  # backoff
    result = posting.publish(any_sessions, VAULT, post_id, now=later, timeout=5)
    assert result is not None and result.state is SocialPostState.POSTED
    assert len(masto.statuses) == 1


def test_a_worker_that_died_mid_post_is_read_back_not_reposted(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    with any_sessions() as session:
        assert posting.claim(session, post_id, NOW) is not None
    # The dead worker's call landed; its outcome was never written.
    masto.statuses.clear()
    with any_sessions() as session:
        post = session.get_one(SocialPost, post_id)
        text, url = post.text, post.share_url
    from digest.social.clients.mastodon import MastodonClient
    from digest.social.platform import Account, LinkCard, Post

    MastodonClient(Account("n", masto.url, {"access_token": masto.token})).publish(
        Post("elsewhere", text, LinkCard(url or "", "t", "d"))
    )
    later = NOW + posting.LEASE + timedelta(seconds=1)
    with any_sessions() as session:
        assert posting.recover(session, later) == 1
    result = posting.publish(any_sessions, VAULT, post_id, now=later, timeout=5)
    assert result is not None and result.state is SocialPostState.POSTED
    assert len(masto.statuses) == 1


def test_a_platform_that_cannot_read_back_marks_the_post_unknown(any_sessions, telegram) -> None:
    _, post_id = _queued(
        any_sessions,
        {
            "platform": "telegram",
            "base_url": telegram.url,
            "credentials": {"bot_token": TELEGRAM_TOKEN, "chat_id": "@examplenews"},
        },
    )
    telegram.fail_next(status=500, after_effect=True)
    first = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert first is not None and first.state is SocialPostState.QUEUED
    with any_sessions() as session:
        assert session.get_one(SocialPost, post_id).verify
    later = NOW + timedelta(hours=1)
    second = posting.publish(any_sessions, VAULT, post_id, now=later, timeout=5)
    assert second is not None and second.state is SocialPostState.UNKNOWN
    assert posting.publish(any_sessions, VAULT, post_id, now=later, timeout=5) is None
    assert len(telegram.posts) == 1


def test_retry_after_holds_the_whole_account(any_sessions, masto) -> None:
    acct_id, post_id = _queued(any_sessions, _masto_account(masto))
    masto.rate_limit(seconds=600)
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.QUEUED
    with any_sessions() as session:
        acct = session.get_one(SocialAccount, acct_id)
        assert acct.retry_at is not None and acct.retry_at > NOW + timedelta(minutes=5)
        assert queue.due_posts(session, NOW + timedelta(minutes=5)) == []


def test_a_refused_token_stops_the_account_until_it_is_connected_again(any_sessions, masto) -> None:
    acct_id, post_id = _queued(
        any_sessions, {"base_url": masto.url, "credentials": {"access_token": "revoked"}}
    )
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.QUEUED
    with any_sessions() as session:
        acct = session.get_one(SocialAccount, acct_id)
        assert acct.status is AccountStatus.REAUTH
        assert "revoked" not in (acct.status_reason or "")
        assert queue.due_posts(session, NOW) == []
        connect(
            session,
            VAULT,
            "mastodon",
            acct.handle,
            {"access_token": masto.token},
            base_url=masto.url,
            now=NOW,
        )
        session.commit()
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.POSTED
    assert len(masto.statuses) == 1


# -- review regressions --------------------------------------------------------------------------


def test_a_post_is_never_taken_over_while_its_task_may_still_run() -> None:
    # The lease outlives the task's hard time limit and a tick after it.
    assert timedelta(seconds=posting.TASK_TIME_LIMIT * 2) < posting.LEASE


def test_posts_that_may_have_landed_never_look_unposted(any_sessions, masto) -> None:
    with any_sessions() as session:
        acct = account(session, base_url=masto.url, credentials={"access_token": masto.token})
        stories = [story(session, pinned=True) for _ in range(3)]
        session.commit()
        ids = [queue.post_now(session, SHARING, acct.id, s.id, NOW).id for s in stories]
        for post in posts(session, acct.id):
            post.verify = True  # an unclear attempt each
        text_before = posts(session, acct.id)[1].text
        session.commit()
        # Expired, skipped or posted again: unknown, or sent with its frozen text.
        queue.skip(session, [ids[0]], NOW)
        stories[1].title = "A corrected headline"
        session.commit()
        again = queue.post_now(session, SHARING, acct.id, stories[1].id, NOW)
        queue.plan(session, SHARING, NOW + timedelta(days=1))
        states = {p.id: p.state for p in posts(session, acct.id)}
        assert states[ids[0]] is SocialPostState.UNKNOWN
        assert states[ids[2]] is SocialPostState.UNKNOWN
        # The text an earlier attempt may have sent, not one composed from the new headline.
        assert again.id == ids[1] and again.text == text_before


def test_a_read_back_that_is_refused_leaves_the_post_unknown(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    with any_sessions() as session:
        session.get_one(SocialPost, post_id).verify = True
        session.commit()
    masto.fail_next(status=403, method="GET")
    result = posting.publish(any_sessions, VAULT, post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.UNKNOWN
    assert masto.statuses == []


def test_unreadable_credentials_hold_the_post_not_the_account(any_sessions, masto) -> None:
    acct_id, post_id = _queued(any_sessions, _masto_account(masto))
    result = posting.publish(any_sessions, Vault(("another-key",)), post_id, now=NOW, timeout=5)
    assert result is not None and result.state is SocialPostState.QUEUED
    with any_sessions() as session:
        assert session.get_one(SocialAccount, acct_id).status is AccountStatus.ACTIVE
    assert masto.requests == []


def test_settings_out_of_range_are_refused_and_one_bad_account_spares_the_rest(
    any_sessions,
) -> None:
    with any_sessions() as session:
        with pytest.raises(AccountError, match="expiry minutes must be 1 to"):
            account(session, expiry_minutes=2_000_000_000)
        broken = account(session)
        healthy = account(session)
        story(session, pinned=True)
        session.commit()
        # Edited by hand past the bounds: its planning fails, the other account's goes on.
        broken.reshare_days, broken.slots, broken.expiry_minutes = 10**7, "10:00", 10**9
        session.commit()
        queue.plan(session, SHARING, NOW)
        assert len(posts(session, healthy.id)) == 1


def test_a_skipped_evergreen_story_is_not_shared_again(any_sessions) -> None:
    with any_sessions() as session:
        acct = account(session, slots="10:00,14:00", reshare_days=30)
        guide = story(session, age=timedelta(days=400), evergreen=True)
        session.add(
            SocialPost(
                story_id=guide.id,
                account_id=acct.id,
                state=SocialPostState.SKIPPED,
                scheduled_for=NOW - timedelta(days=60),
            )
        )
        session.commit()
        assert queue.plan(session, SHARING, NOW) == 0


def test_connecting_or_resuming_does_not_post_earlier_must_reads(any_sessions) -> None:
    with any_sessions() as session:
        for _ in range(3):
            story(session, pinned=True, age=timedelta(hours=2))
        session.commit()
        fresh = connect(
            session, VAULT, "mastodon", "late", {"access_token": "t"},
            base_url="https://example.social", now=NOW,
        )  # fmt: skip
        session.commit()
        assert queue.plan(session, SHARING, NOW) == 0
        newer = story(session, pinned=True, age=timedelta(minutes=-1))
        newer.first_seen_at = NOW + timedelta(minutes=1)
        session.commit()
        assert queue.plan(session, SHARING, NOW + timedelta(minutes=2)) == 1
        # Paused, then resumed: what came in meanwhile is not posted at once either.
        update_settings(session, fresh.id, PostingSettings(), NOW, paused=True)
        session.commit()
        story(session, pinned=True, age=timedelta(minutes=-3)).first_seen_at = NOW + timedelta(
            minutes=3
        )
        update_settings(
            session, fresh.id, PostingSettings(), NOW + timedelta(minutes=4), paused=False
        )
        session.commit()
        assert queue.plan(session, SHARING, NOW + timedelta(minutes=5)) == 0
        # A reconnect keeps a paused account paused.
        update_settings(session, fresh.id, PostingSettings(), NOW, paused=True)
        connect(
            session, VAULT, "mastodon", "late", {"access_token": "t2"},
            base_url="https://example.social", now=NOW,
        )  # fmt: skip
        assert fresh.status is AccountStatus.PAUSED


def test_a_claim_past_the_expiry_expires_without_a_call(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    late = NOW + timedelta(hours=3)
    result = posting.publish(any_sessions, VAULT, post_id, now=late, timeout=5)
    assert result is not None and result.state is SocialPostState.EXPIRED
    assert masto.requests == []


def test_a_success_written_after_the_lease_ran_out_still_counts(any_sessions, masto) -> None:
    _, post_id = _queued(any_sessions, _masto_account(masto))
    with any_sessions() as session:
        attempt = posting.claim(session, post_id, NOW)
        row = session.get_one(SocialPost, post_id)
    assert attempt == 1
    with any_sessions() as session:
        assert posting.recover(session, NOW + posting.LEASE + timedelta(seconds=1)) == 1
    change = posting._Change(SocialPostState.POSTED, "", published=Published("110", "u"))
    result = posting._finish(any_sessions, row, attempt, None, change, NOW)
    assert result.state is SocialPostState.POSTED
    with any_sessions() as session:
        assert session.get_one(SocialPost, post_id).state is SocialPostState.POSTED
