"""Social posting on real parts: a real Celery worker with its beat, a real broker, and local
servers standing in for Mastodon, Bluesky and Telegram that fail on demand. After unclear
failures, dropped connections and rate limits, every story is posted
exactly once per account, and the posts link back through our tracked redirect."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.models import SocialAccount, SocialPost, SocialPostState, Story, utcnow
from digest.social.accounts import PostingSettings, connect
from digest.social.vault import Vault
from tests.conftest import RABBITMQ_URL
from tests.integration.test_end_to_end import _delete_queue
from tests.social_fakes.base import Failure
from tests.social_fakes.bluesky import BlueskyFake
from tests.social_fakes.mastodon import MastodonFake
from tests.social_fakes.telegram import Channel, TelegramFake
from tests.support import require_service, wait_until

STORIES = 3
TELEGRAM_TOKEN = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


@pytest.fixture(params=["embedded", "rabbitmq"])
def social_env(request, env: dict[str, str]) -> dict[str, str]:
    if request.param == "rabbitmq":
        require_service("rabbitmq", RABBITMQ_URL, 5672)
        env["DIGEST_BROKER_URL"] = RABBITMQ_URL
        env["DIGEST_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        request.addfinalizer(lambda: _delete_queue(RABBITMQ_URL, env["DIGEST_QUEUE"]))
    env["DIGEST_SOCIAL_RETRY_SECONDS"] = "1"
    env["DIGEST_BASE_URL"] = "https://digest.example.com"
    return env


def test_every_story_lands_once_per_account_through_failures(social_env, start_worker) -> None:
    settings = load_settings(social_env)
    migrate(settings.database_url)
    sessions = session_factory(settings.database_url)
    vault = Vault(settings.secret_keys)
    masto = MastodonFake(token="masto-secret-token-1").start()
    bsky = BlueskyFake().start()
    telegram = TelegramFake(TELEGRAM_TOKEN, [Channel(-1001, "examplenews", "Example News")])
    telegram.start()
    try:
        now = utcnow()
        with sessions() as session:
            for n in range(STORIES):
                session.add(
                    Story(
                        canonical_url=f"https://news.example.com/must-read-{n}",
                        title=f"Must-read number {n}",
                        summary="What happened, and why it matters to the city.",
                        section="City",
                        published_at=now - timedelta(minutes=10 + n),
                        first_seen_at=now - timedelta(minutes=10 + n),
                        pinned_until=now + timedelta(days=1),
                    )
                )
            for platform, fake, credentials in (
                ("mastodon", masto, {"access_token": masto.token}),
                ("bluesky", bsky, {"app_password": bsky.app_password}),
                ("telegram", telegram, {"bot_token": TELEGRAM_TOKEN, "chat_id": "@examplenews"}),
            ):
                connect(
                    session,
                    vault,
                    platform,
                    bsky.handle if platform == "bluesky" else "news",
                    credentials,
                    base_url=fake.url,
                    settings=PostingSettings(daily_cap=10),
                    # Connected before the stories came in: they are new must-reads to it.
                    now=now - timedelta(hours=1),
                )
            session.commit()

        # Mastodon stores the first status and answers 502; then says "slow down" once.
        masto.fail_next(status=502, after_effect=True, method="POST", path="/statuses")
        masto.rate_limit(seconds=2, method="POST", path="/statuses")
        # Bluesky stores the first record and drops the connection.
        bsky.fail_next(Failure(drop=True, after_effect=True, path="createRecord"))
        # Telegram's flood control, twice.
        telegram.flood(1, times=2)

        worker = start_worker(social_env)

        def settled() -> bool:
            assert worker.proc.poll() is None, worker.output()
            with sessions() as session:
                waiting = session.scalar(
                    select(func.count())
                    .select_from(SocialPost)
                    .where(SocialPost.state.in_((SocialPostState.QUEUED, SocialPostState.POSTING)))
                )
                total = session.scalar(select(func.count()).select_from(SocialPost))
            return total == 3 * STORIES and waiting == 0

        wait_until(settled, 120, "every social post to settle")

        with sessions() as session:
            rows = session.execute(
                select(SocialPost, SocialAccount.platform).join(SocialAccount)
            ).all()
        assert {r.state for r, _ in rows} == {SocialPostState.POSTED}, [
            (r.id, r.state, r.last_error) for r, _ in rows
        ]
        # Exactly one post per story on each platform, each with its own tracked link.
        texts = {
            "mastodon": [s.text for s in masto.statuses],
            "bluesky": [r["value"]["text"] for r in bsky.records.values()],
            "telegram": [p["text"] for p in telegram.posts],
        }
        for platform, posted in texts.items():
            urls = [r.share_url or "" for r, p in rows if p == platform]
            assert len(posted) == len(urls) == STORIES, platform
            assert all(u.startswith("https://digest.example.com/c/") for u in urls)
            assert sorted(sum(u in text for text in posted) for u in urls) == [1] * STORIES
        # One login: the session is stored (encrypted) and reused by every later task.
        assert bsky.create_sessions == 1
        # Every injected failure was met, and the unclear ones were read back, not reposted.
        assert not masto.failures and not bsky.failures and not telegram.failures
        attempts = {p: sorted(r.attempts for r, q in rows if q == p) for p in texts}
        assert max(attempts["mastodon"]) >= 2 and max(attempts["bluesky"]) >= 2
    finally:
        for fake in (masto, bsky, telegram):
            fake.stop()
