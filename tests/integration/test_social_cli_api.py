"""`digest social …` and /api/social, as an editor uses them: connect an account (credentials
encrypted, never shown), preview, post now, the queue, approval, re-keying."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from digest.cli import main
from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.models import SocialAccount, SocialPost, SocialPostState, Story, utcnow
from digest.social.vault import Vault
from tests.social_fakes.mastodon import MastodonFake

TOKEN = "masto-secret-token-1"


@pytest.fixture
def masto() -> Iterator[MastodonFake]:
    fake = MastodonFake(token=TOKEN, max_characters=1000).start()
    yield fake
    fake.stop()


@pytest.fixture
def cli_env(env: dict[str, str]) -> dict[str, str | None]:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DIGEST_")}
    return {**unset, **env, "DIGEST_BASE_URL": "https://digest.example.com"}


@pytest.fixture
def digest(cli_env) -> Callable[..., Result]:
    runner = CliRunner()

    def digest(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), env=cli_env, input=input)

    return digest


@pytest.fixture
def story_id(env: dict[str, str]) -> int:
    settings = load_settings(env)
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as session:
        story = Story(
            canonical_url="https://news.example.com/harbour",
            title="Harbour bridge reopens",
            summary="After two years of works, the bridge carries traffic again.",
            section="City",
            published_at=utcnow() - timedelta(hours=1),
        )
        session.add(story)
        session.commit()
        return story.id


def test_connect_preview_post_and_queue(digest, env, masto, story_id) -> None:
    connected = digest(
        "social", "connect", "mastodon", "@news@example.social",
        "--base-url", masto.url, "--slots", "08:00, 17:30", "--timezone", "Europe/Berlin",
        "--credentials-file", "-",
        input=json.dumps({"access_token": TOKEN}),
    )  # fmt: skip
    assert connected.exit_code == 0, connected.output
    assert "08:00,17:30 (Europe/Berlin)" in connected.output
    assert TOKEN not in connected.output
    settings = load_settings(env)
    with session_factory(settings.database_url)() as session:
        account = session.scalars(select(SocialAccount)).one()
        # The instance's own limit was asked for; the token is stored encrypted only.
        assert account.max_characters == 1000
        assert account.credentials and TOKEN.encode() not in account.credentials
        assert Vault(settings.secret_keys).open(account.credentials) == {"access_token": TOKEN}

    preview = digest("social", "preview", str(story_id))
    assert preview.exit_code == 0, preview.output
    assert "mastodon:@news@example.social: " in preview.output
    assert "of 1,000 graphemes" in preview.output
    assert "Harbour bridge reopens" in preview.output

    posted = digest("social", "post", str(story_id), "--account", str(account.id))
    assert posted.exit_code == 0, posted.output
    assert "posted:" in posted.output
    assert len(masto.statuses) == 1

    again = digest("social", "post", "https://news.example.com/harbour", "--account", "1")
    assert again.exit_code == 1 and "--again" in again.output
    assert len(masto.statuses) == 1

    listed = digest("social", "queue")
    assert listed.exit_code == 0, listed.output
    assert "posted" in listed.output and "Harbour bridge reopens" in listed.output
    assert "0/6 today" not in listed.output  # the manual post counts

    evergreen = digest("stories", "evergreen", "https://news.example.com/harbour")
    assert evergreen.exit_code == 0 and "evergreen: Harbour" in evergreen.output


def test_connect_refuses_missing_credentials_and_bad_slots(digest, masto) -> None:
    missing = digest(
        "social", "connect", "x", "news", "--credentials-file", "-",
        input=json.dumps({"consumer_key": "k"}),
    )  # fmt: skip
    assert missing.exit_code == 1
    assert "x needs consumer_secret" in missing.output
    bad = digest(
        "social", "connect", "bluesky", "news.example.com", "--slots", "25:00",
        "--credentials-file", "-", input=json.dumps({"app_password": "a-b-c-d"}),
    )  # fmt: skip
    assert bad.exit_code == 1 and "'25:00' is not a time" in bad.output
    listed = digest("social", "accounts")
    assert "no accounts" in listed.output
    for odd in (["social", "preview", "²"], ["social", "approve", "99999999999999999999"]):
        refused = digest(*odd)
        # A clear usage or command error (SystemExit from click), not a traceback.
        assert isinstance(refused.exception, SystemExit), refused.exception
        assert refused.exit_code in (1, 2) and "Error" in refused.output, refused.output


def test_rekey_moves_credentials_to_the_newest_key(digest, cli_env, env, story_id) -> None:
    assert (
        digest(
            "social", "connect", "telegram", "@examplenews", "--credentials-file", "-",
            input=json.dumps({"bot_token": "110201543:AAHdqTcvCH1vGWJxfSeofSA", "chat_id": "@x"}),
        ).exit_code
        == 0
    )  # fmt: skip
    old = env["DIGEST_SECRET_KEYS"]
    cli_env["DIGEST_SECRET_KEYS"] = f"brand-new-key,{old}"
    rekeyed = digest("social", "rekey")
    assert rekeyed.exit_code == 0 and "1 accounts" in rekeyed.output
    with session_factory(load_settings(env).database_url)() as session:
        sealed = session.scalars(select(SocialAccount.credentials)).one()
    assert Vault(("brand-new-key",)).open(sealed)["chat_id"] == "@x"


def test_the_api_connects_queues_and_approves(env, web_server, masto, story_id) -> None:
    env["DIGEST_API_TOKENS"] = "s3cret"
    base = web_server(load_settings(env))
    api = httpx.Client(base_url=f"{base}/api/social", headers={"Authorization": "Bearer s3cret"})
    assert httpx.get(f"{base}/api/social/accounts").status_code == 401

    made = api.post(
        "/accounts",
        json={
            "platform": "mastodon",
            "handle": "news",
            "base_url": masto.url,
            "credentials": {"access_token": TOKEN},
            "approval": True,
        },
    )
    assert made.status_code == 201, made.text
    assert TOKEN not in made.text and "credentials" not in made.json()
    account_id = made.json()["id"]
    bad = api.post("/accounts", json={"platform": "myspace", "handle": "n", "credentials": {}})
    assert bad.status_code == 422 and "unknown platform" in bad.json()["detail"]
    # A malformed request is refused without echoing what it carried.
    incomplete = api.post(
        "/accounts", json={"platform": "mastodon", "credentials": {"access_token": TOKEN}}
    )
    assert incomplete.status_code == 422 and TOKEN not in incomplete.text
    assert api.get("/preview/99999999999999999999").status_code == 422
    assert api.post("/posts", json={"story_id": 999, "account_id": account_id}).status_code == 404

    preview = api.get(f"/preview/{story_id}").json()
    assert preview[0]["fits"] and "Harbour bridge reopens" in preview[0]["text"]

    queued = api.post("/posts", json={"story_id": story_id, "account_id": account_id})
    assert queued.status_code == 202, queued.text
    # An editor's own post needs no approval.
    assert queued.json()["state"] == "queued"
    assert api.post("/posts", json={"story_id": story_id, "account_id": 999}).status_code == 404

    queue = api.get("/queue").json()
    assert queue["accounts"][0]["account"] == "mastodon:news"
    assert [p["id"] for p in queue["posts"]] == [queued.json()["id"]]

    assert api.post("/posts/skip", json={"ids": [queued.json()["id"]]}).json() == {"changed": 1}
    with session_factory(load_settings(env).database_url)() as session:
        post = session.scalars(select(SocialPost)).one()
        assert post.state is SocialPostState.SKIPPED

    paused = api.patch(f"/accounts/{account_id}", json={"paused": True, "daily_cap": 3})
    assert paused.json()["status"] == "paused" and paused.json()["daily_cap"] == 3
    assert api.patch("/accounts/999", json={}).status_code == 404
