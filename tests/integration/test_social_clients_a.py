"""Mastodon, Bluesky, X and Threads clients against local fakes of those platforms, over real
HTTP on 127.0.0.1: the request each platform receives, the decision table of each, and the
exactly-once story (an unclear failure, a read-back, and never a second post)."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from digest.social.clients import bluesky, mastodon, threads, x
from digest.social.clients.bluesky import BlueskyClient
from digest.social.clients.mastodon import MastodonClient
from digest.social.clients.threads import ThreadsClient
from digest.social.clients.x import XClient
from digest.social.http import retry_after
from digest.social.platform import Account, LinkCard, Outcome, PlatformError, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.bluesky import BlueskyFake
from tests.social_fakes.mastodon import MastodonFake
from tests.social_fakes.threads import ThreadsFake
from tests.social_fakes.x import XFake

STORY = "https://news.example.com/2024/05/harbour-bridge?utm_source=social&utm_medium=bsky"
CARD = LinkCard(
    url=STORY,
    title="Harbour bridge reopens",
    description="After two years of works, the bridge carries traffic again.",
)
# Non-ASCII before the link, so byte offsets and character offsets differ.
TEXT = f"Café owners cheer 🎉 as the bridge reopens: {STORY}"
# Smallest valid PNG header: enough for type sniffing, the fake stores bytes only.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def make_post(key: str = "story-42/account-7/a", text: str = TEXT, card: LinkCard = CARD) -> Post:
    return Post(key=key, text=text, card=card)


def failure_of(call: Any, *args: Any) -> PlatformError:
    with pytest.raises(PlatformError) as info:
        call(*args)
    return info.value


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# -- Mastodon ---------------------------------------------------------------------------------


@pytest.fixture
def masto() -> Iterator[MastodonFake]:
    fake = MastodonFake(token="masto-secret-token-1").start()
    yield fake
    fake.stop()


def masto_client(fake: MastodonFake, **credentials: Any) -> MastodonClient:
    creds = {"access_token": fake.token, **credentials}
    return MastodonClient(Account("newsroom", fake.url, creds), timeout=5)


def test_mastodon_publish_sends_one_status_with_an_idempotency_key(masto: MastodonFake) -> None:
    post = make_post()
    published = masto_client(masto).publish(post)

    assert [s.text for s in masto.statuses] == [TEXT]
    (request,) = masto.post_requests()
    assert request.headers["authorization"] == "Bearer masto-secret-token-1"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"status": TEXT, "visibility": "public"}
    expected_key = hashlib.sha256(f"newsroom-digest:{post.key}".encode()).hexdigest()
    assert request.headers["idempotency-key"] == expected_key
    assert published.remote_id == masto.statuses[0].id
    assert published.url == f"{masto.url}/@newsroom/{published.remote_id}"


def test_mastodon_retry_after_an_unclear_failure_reuses_the_key_and_posts_once(
    masto: MastodonFake,
) -> None:
    client, post = masto_client(masto), make_post()
    masto.fail_next(status=500, body={"error": "boom"}, after_effect=True)
    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR

    again = client.publish(post)

    assert len(masto.statuses) == 1
    assert again.remote_id == masto.statuses[0].id
    first, second = masto.post_requests()
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


@pytest.mark.parametrize("failure", [Failure(status=502, after_effect=True), Failure(drop=True)])
def test_mastodon_unclear_failure_then_read_back_finds_the_post(
    masto: MastodonFake, failure: Failure
) -> None:
    client, post = masto_client(masto), make_post()
    masto.fail_next(failure)

    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR
    found = client.find_published(post)
    # The queue reads back before any retry: found means done, not found means post again.
    if found is None:
        client.publish(post)
        found = client.find_published(post)

    assert len(masto.statuses) == 1
    assert found is not None and found.remote_id == masto.statuses[0].id


def test_mastodon_find_published_matches_the_link_in_the_html_content(masto: MastodonFake) -> None:
    client = masto_client(masto)
    other = make_post("story-1/account-7/a", "Elsewhere: https://news.example.com/other")
    client.publish(other)
    assert client.find_published(make_post()) is None

    published = client.publish(make_post())
    # The content escapes & as &amp; in the href; the match must see through it.
    assert "&amp;" in masto._entity(masto.statuses[-1])["content"]
    assert client.find_published(make_post()) == published


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (401, {"error": "The access token is invalid"}, Outcome.REAUTH),
        (403, {"error": "This action is outside the authorized scopes"}, Outcome.GIVE_UP),
        (404, {"error": "Record not found"}, Outcome.GIVE_UP),
        (410, {"error": "Account is suspended"}, Outcome.GIVE_UP),
        (422, {"error": "Validation failed: Text can't be blank"}, Outcome.GIVE_UP),
        (429, {"error": "Too many requests"}, Outcome.RETRY),
        (500, {"error": "Internal server error"}, Outcome.UNCLEAR),
        (503, b"<html>Service Unavailable</html>", Outcome.UNCLEAR),
    ],
)
def test_mastodon_decision_table(
    masto: MastodonFake, status: int, body: Any, outcome: Outcome
) -> None:
    masto.fail_next(status=status, body=body)
    error = failure_of(masto_client(masto).publish, make_post())
    assert (error.outcome, error.status) == (outcome, status)
    assert mastodon.decide(status, posts=True) is outcome
    if isinstance(body, dict):
        assert body["error"] in error.message
    assert masto.statuses == []


def test_mastodon_reads_fail_with_retry_not_unclear() -> None:
    assert mastodon.decide(500, posts=False) is Outcome.RETRY
    assert mastodon.decide(401, posts=False) is Outcome.REAUTH


def test_mastodon_real_validation_and_auth_failures(masto: MastodonFake) -> None:
    too_long = make_post(text="word " * 120 + STORY)
    error = failure_of(masto_client(masto).publish, too_long)
    assert error.outcome is Outcome.GIVE_UP
    assert "character limit of 500 exceeded" in error.message

    error = failure_of(masto_client(masto, access_token="revoked").publish, make_post())
    assert (error.outcome, error.status) == (Outcome.REAUTH, 401)
    assert masto.statuses == []


def test_mastodon_url_counts_as_23_characters(masto: MastodonFake) -> None:
    long_link = "https://news.example.com/" + "a" * 600
    masto_client(masto).publish(make_post(text="x" * 470 + " " + long_link))
    assert len(masto.statuses) == 1


def test_mastodon_rate_limit_yields_retry_after_from_the_reset_time(masto: MastodonFake) -> None:
    masto.rate_limit(seconds=120)
    error = failure_of(masto_client(masto).publish, make_post())
    assert error.outcome is Outcome.RETRY
    assert error.retry_after is not None and 115 <= error.retry_after <= 121


def test_mastodon_retry_after_header_wins(masto: MastodonFake) -> None:
    masto.fail_next(status=503, headers={"Retry-After": "30"}, method="GET")
    error = failure_of(masto_client(masto).find_published, make_post())
    assert (error.outcome, error.retry_after) == (Outcome.RETRY, 30.0)


def test_mastodon_connection_refused_is_retry() -> None:
    client = MastodonClient(Account("newsroom", closed_port_url(), {"access_token": "t"}))
    error = failure_of(client.publish, make_post())
    assert error.outcome is Outcome.RETRY
    assert error.status is None


def test_mastodon_missing_token_is_reauth(masto: MastodonFake) -> None:
    client = MastodonClient(Account("newsroom", masto.url, {}))
    assert failure_of(client.publish, make_post()).outcome is Outcome.REAUTH
    assert masto.requests == []


def test_mastodon_malformed_token_is_give_up_and_sends_nothing(masto: MastodonFake) -> None:
    client = MastodonClient(Account("newsroom", masto.url, {"access_token": "tok\r\nX-Evil: 1"}))
    error = failure_of(client.publish, make_post())
    assert error.outcome is Outcome.GIVE_UP
    assert "X-Evil" not in error.message
    assert masto.requests == []


def test_mastodon_instance_limits() -> None:
    fake = MastodonFake(max_characters=1000).start()
    try:
        limits = masto_client(fake).instance_limits()
    finally:
        fake.stop()
    assert (limits.max_characters, limits.characters_reserved_per_url) == (1000, 23)


# -- Bluesky ----------------------------------------------------------------------------------


@pytest.fixture
def sky() -> Iterator[BlueskyFake]:
    fake = BlueskyFake(app_password="sky-app-password-1").start()
    yield fake
    fake.stop()


class Saved:
    """What on_credentials received, as the caller would store it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, credentials: Any) -> None:
        self.calls.append(dict(credentials))


def sky_account(fake: BlueskyFake, **credentials: Any) -> tuple[Account, Saved]:
    saved = Saved()
    creds = {"app_password": fake.app_password, **credentials}
    return Account(fake.handle, fake.url, creds, on_credentials=saved), saved


def test_bluesky_publish_logs_in_once_and_makes_the_record(sky: BlueskyFake) -> None:
    account, saved = sky_account(sky)
    post = make_post()
    published = BlueskyClient(account, timeout=5).publish(post)

    assert sky.create_sessions == 1
    assert [c["did"] for c in saved.calls] == [sky.did]
    assert {"accessJwt", "refreshJwt", "did"} <= account.credentials.keys()

    rkey = bluesky.record_key(post)
    assert re.fullmatch(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}", rkey)
    assert bluesky.record_key(make_post()) == rkey  # the same on every attempt
    assert bluesky.record_key(make_post("another")) != rkey
    record = sky.records[rkey]["value"]
    assert record["$type"] == "app.bsky.feed.post"
    assert record["text"] == TEXT
    assert record["createdAt"].endswith("Z")
    start = len(TEXT[: TEXT.index("https://")].encode())
    assert record["facets"] == [
        {
            "index": {"byteStart": start, "byteEnd": start + len(STORY.encode())},
            "features": [{"$type": "app.bsky.richtext.facet#link", "uri": STORY}],
        }
    ]
    assert record["embed"] == {
        "$type": "app.bsky.embed.external",
        "external": {"uri": STORY, "title": CARD.title, "description": CARD.description},
    }
    assert published.remote_id == f"at://{sky.did}/app.bsky.feed.post/{rkey}"
    assert published.url == f"https://bsky.app/profile/{sky.handle}/post/{rkey}"
    (create,) = [r for r in sky.requests if r.path.endswith("createRecord")]
    assert create.headers["authorization"] == f"Bearer {account.credentials['accessJwt']}"
    assert create.json()["repo"] == sky.did and create.json()["rkey"] == rkey


def test_bluesky_thumbnail_is_uploaded_first_and_referenced(sky: BlueskyFake) -> None:
    card = LinkCard(STORY, CARD.title, CARD.description, image=PNG)
    account, _ = sky_account(sky)
    post = make_post(card=card)
    BlueskyClient(account).publish(post)

    paths = [r.path.rsplit(".", 1)[-1] for r in sky.requests]
    assert paths == ["createSession", "uploadBlob", "createRecord"]
    upload = sky.requests[1]
    assert upload.headers["content-type"] == "image/png" and upload.body == PNG
    thumb = sky.records[bluesky.record_key(post)]["value"]["embed"]["external"]["thumb"]
    assert thumb["$type"] == "blob" and thumb["mimeType"] == "image/png"
    assert thumb["size"] == len(PNG) and thumb["ref"]["$link"] in sky.blobs


def test_bluesky_thumbnail_over_the_blob_limit_is_left_out(sky: BlueskyFake) -> None:
    big = PNG + b"\x00" * (bluesky.THUMB_MAX_BYTES + 1 - len(PNG))
    account, _ = sky_account(sky)
    post = make_post(card=LinkCard(STORY, CARD.title, CARD.description, image=big))
    BlueskyClient(account).publish(post)

    assert not [r for r in sky.requests if r.path.endswith("uploadBlob")]
    assert "thumb" not in sky.records[bluesky.record_key(post)]["value"]["embed"]["external"]


def test_bluesky_ten_posts_make_one_login(sky: BlueskyFake) -> None:
    account, saved = sky_account(sky)
    client = BlueskyClient(account)
    for n in range(10):
        client.publish(make_post(f"story-{n}/account-7/a"))
    # A new client on the stored session (the next task) does not log in either.
    BlueskyClient(Account(sky.handle, sky.url, dict(saved.calls[-1]))).publish(make_post("more"))

    assert sky.create_sessions == 1
    assert len(sky.records) == 11
    assert len(saved.calls) == 1


def test_bluesky_expired_token_is_refreshed_once_and_stored(sky: BlueskyFake) -> None:
    account, saved = sky_account(sky)
    client = BlueskyClient(account)
    client.publish(make_post("first"))
    old = dict(account.credentials)
    sky.expire_access_tokens()

    client.publish(make_post("second"))

    assert (sky.create_sessions, sky.refreshes) == (1, 1)
    assert len(sky.records) == 2
    refresh = next(r for r in sky.requests if r.path.endswith("refreshSession"))
    assert refresh.headers["authorization"] == f"Bearer {old['refreshJwt']}"
    assert account.credentials["accessJwt"] != old["accessJwt"]
    assert saved.calls[-1]["accessJwt"] == account.credentials["accessJwt"]
    assert saved.calls[-1]["refreshJwt"] == account.credentials["refreshJwt"]


def test_bluesky_dead_refresh_token_logs_in_again_with_the_app_password(sky: BlueskyFake) -> None:
    account, _ = sky_account(sky)
    client = BlueskyClient(account)
    client.publish(make_post("first"))
    sky.expire_access_tokens()
    sky.revoke_refresh_tokens()

    client.publish(make_post("second"))

    assert sky.create_sessions == 2 and len(sky.records) == 2


def test_bluesky_dead_session_without_app_password_is_reauth(sky: BlueskyFake) -> None:
    account, _ = sky_account(sky)
    BlueskyClient(account).publish(make_post("first"))
    session = {k: account.credentials[k] for k in ("accessJwt", "refreshJwt", "did")}
    sky.expire_access_tokens()
    sky.revoke_refresh_tokens()

    error = failure_of(BlueskyClient(Account(sky.handle, sky.url, session)).publish, make_post())

    assert error.outcome is Outcome.REAUTH
    assert len(sky.records) == 1


def test_bluesky_wrong_app_password_is_reauth(sky: BlueskyFake) -> None:
    account, saved = sky_account(sky, app_password="wrong-password")
    error = failure_of(BlueskyClient(account).publish, make_post())
    assert (error.outcome, error.status) == (Outcome.REAUTH, 401)
    assert "Invalid identifier or password" in error.message
    assert saved.calls == [] and sky.records == {}


def test_bluesky_unclear_failure_reads_back_by_record_key(sky: BlueskyFake) -> None:
    account, _ = sky_account(sky)
    client, post = BlueskyClient(account), make_post()
    assert client.find_published(post) is None
    sky.fail_next(
        status=502, body={"error": "UpstreamFailure"}, after_effect=True, path="createRecord"
    )

    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR
    found = client.find_published(post)

    assert found is not None and found.remote_id.endswith("/" + bluesky.record_key(post))
    assert len(sky.records) == 1
    # A caller that retried blindly still could not post twice: the key is taken, and the PDS
    # answers that with a 500, which is unclear again and sends it back to the read-back.
    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR
    assert len(sky.records) == 1


@pytest.mark.parametrize(
    ("status", "body", "path", "outcome"),
    [
        (400, {"error": "InvalidRequest", "message": "bad"}, "createRecord", Outcome.GIVE_UP),
        (400, {"error": "AccountTakedown", "message": "gone"}, "createRecord", Outcome.GIVE_UP),
        (
            401,
            {"error": "AuthMissing", "message": "Authentication Required"},
            "createRecord",
            Outcome.REAUTH,
        ),
        (429, {"error": "RateLimitExceeded", "message": "slow"}, "createRecord", Outcome.RETRY),
        (409, {"error": "RecordAlreadyExists", "message": "x"}, "createRecord", Outcome.UNCLEAR),
        (
            500,
            {"error": "InternalServerError", "message": "Internal"},
            "createRecord",
            Outcome.UNCLEAR,
        ),
        (502, {"error": "UpstreamFailure", "message": "down"}, "uploadBlob", Outcome.RETRY),
        (503, None, "createSession", Outcome.RETRY),
    ],
)
def test_bluesky_decision_table(
    sky: BlueskyFake, status: int, body: Any, path: str, outcome: Outcome
) -> None:
    account, _ = sky_account(sky)
    sky.fail_next(status=status, body=body, path=path)
    post = make_post(card=LinkCard(STORY, CARD.title, CARD.description, image=PNG))
    error = failure_of(BlueskyClient(account).publish, post)
    assert (error.outcome, error.status) == (outcome, status)
    assert sky.records == {}
    name = body["error"] if body else None
    assert bluesky.decide(status, name, posts=path == "createRecord") is outcome


def test_bluesky_record_over_300_graphemes_is_give_up(sky: BlueskyFake) -> None:
    account, _ = sky_account(sky)
    error = failure_of(BlueskyClient(account).publish, make_post(text="é" * 301))
    assert error.outcome is Outcome.GIVE_UP
    assert "300 graphemes" in error.message


def test_bluesky_rate_limit_yields_retry_after_from_ratelimit_reset(sky: BlueskyFake) -> None:
    account, _ = sky_account(sky)
    sky.rate_limit(seconds=300, path="createRecord")
    error = failure_of(BlueskyClient(account).publish, make_post())
    assert error.outcome is Outcome.RETRY
    assert error.retry_after is not None and 295 <= error.retry_after <= 301


# -- X ----------------------------------------------------------------------------------------


def test_x_signature_matches_the_documented_example() -> None:
    # X's "Creating a signature" page. Its text now says api.x.com, but the published
    # signature was computed over the original api.twitter.com URL.
    params = [
        ("status", "Hello Ladies + Gentlemen, a signed OAuth request!"),
        ("include_entities", "true"),
        ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
        ("oauth_nonce", "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1318622958"),
        ("oauth_token", "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"),
        ("oauth_version", "1.0"),
    ]
    base = x.signature_base_string(
        "post", "https://API.twitter.com/1.1/statuses/update.json", params
    )
    assert base == (
        "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue"
        "%26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYS"
        "Q2pTgmZeNu2VS4cg%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oa"
        "uth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26st"
        "atus%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520reque"
        "st%2521"
    )
    signature = x.sign(
        base,
        "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
        "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
    )
    assert signature == "hCtSmYh+iHYCEqBWrE7C7hYmtUk="

    header = x.authorization_header(
        "POST",
        "https://api.twitter.com/1.1/statuses/update.json",
        {"include_entities": "true", "status": "Hello Ladies + Gentlemen, a signed OAuth request!"},
        {
            "consumer_key": "xvz1evFS4wEEPTGEFPHBog",
            "consumer_secret": "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
            "access_token": "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
            "access_token_secret": "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
        },
        nonce="kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg",
        timestamp=1318622958,
    )
    assert 'oauth_signature="hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D"' in header
    assert header.startswith('OAuth oauth_consumer_key="xvz1evFS4wEEPTGEFPHBog", oauth_nonce=')


@pytest.fixture
def xfake() -> Iterator[XFake]:
    fake = XFake(consumer_secret="x-consumer-secret-1", access_token_secret="x-token-secret-1")
    fake.start()
    yield fake
    fake.stop()


def x_client(fake: XFake, **overrides: Any) -> XClient:
    creds = {
        "consumer_key": fake.consumer_key,
        "consumer_secret": fake.consumer_secret,
        "access_token": fake.access_token,
        "access_token_secret": fake.access_token_secret,
        **overrides,
    }
    return XClient(Account("newsroom", fake.url, creds), timeout=5)


def test_x_publish_is_signed_and_posts_the_text(xfake: XFake) -> None:
    published = x_client(xfake).publish(make_post())

    assert [t.submitted for t in xfake.tweets] == [TEXT]
    (request,) = xfake.requests
    assert request.json() == {"text": TEXT}
    assert request.headers["content-type"] == "application/json"
    assert xfake.signature_failures == 0
    assert published.remote_id == xfake.tweets[0].id
    assert published.url == f"https://x.com/newsroom/status/{published.remote_id}"


def test_x_wrong_secret_fails_the_signature_and_is_reauth(xfake: XFake) -> None:
    error = failure_of(x_client(xfake, consumer_secret="not-the-secret").publish, make_post())
    assert (error.outcome, error.status) == (Outcome.REAUTH, 401)
    assert xfake.signature_failures == 1 and xfake.tweets == []


def test_x_unclear_failure_reads_back_through_the_tco_rewrite(xfake: XFake) -> None:
    client, post = x_client(xfake), make_post()
    assert client.find_published(post) is None
    xfake.fail_next(
        status=503,
        body={
            "title": "Service Unavailable",
            "detail": "Service Unavailable",
            "type": "about:blank",
        },
        after_effect=True,
        method="POST",
    )

    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR
    found = client.find_published(post)

    assert STORY not in xfake.tweets[0].text  # X shows t.co; the match is on expanded_url
    assert found is not None and found.remote_id == xfake.tweets[0].id
    assert len(xfake.tweets) == 1


def test_x_duplicate_refusal_after_a_landed_post_is_unclear(xfake: XFake) -> None:
    client, post = x_client(xfake), make_post()
    client.publish(post)
    error = failure_of(client.publish, post)
    assert (error.outcome, error.status) == (Outcome.UNCLEAR, 403)
    assert "duplicate content" in error.message
    assert client.find_published(post) is not None
    assert len(xfake.tweets) == 1


def test_x_find_published_uses_the_stored_user_id(xfake: XFake) -> None:
    client = x_client(xfake, user_id=xfake.user_id)
    client.publish(make_post())
    assert client.find_published(make_post()) is not None
    assert not [r for r in xfake.requests if r.path == "/2/users/me"]
    timeline = xfake.requests[-1]
    assert timeline.query["tweet.fields"] == ["entities,created_at"]


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (
            400,
            {
                "title": "Invalid Request",
                "detail": "One or more parameters",
                "errors": [{"message": "bad text"}],
            },
            Outcome.GIVE_UP,
        ),
        (
            401,
            {
                "title": "Unauthorized",
                "detail": "Unauthorized",
                "type": "about:blank",
                "status": 401,
            },
            Outcome.REAUTH,
        ),
        (
            403,
            {
                "title": "Forbidden",
                "detail": "You are not permitted to perform this action.",
                "status": 403,
            },
            Outcome.GIVE_UP,
        ),
        (
            429,
            {"title": "Too Many Requests", "detail": "Too Many Requests", "status": 429},
            Outcome.RETRY,
        ),
        (500, {"title": "Internal Server Error", "detail": "oops", "status": 500}, Outcome.UNCLEAR),
    ],
)
def test_x_decision_table(xfake: XFake, status: int, body: Any, outcome: Outcome) -> None:
    xfake.fail_next(status=status, body=body)
    error = failure_of(x_client(xfake).publish, make_post())
    assert (error.outcome, error.status) == (outcome, status)
    assert body["detail"] in error.message
    assert x.decide(status, x.error_detail(body), posts=True) is outcome
    assert xfake.tweets == []


def test_x_too_long_is_give_up_with_the_reason(xfake: XFake) -> None:
    error = failure_of(x_client(xfake).publish, make_post(text="日本語" * 50 + " " + STORY))
    assert error.outcome is Outcome.GIVE_UP
    assert "too long" in error.message


def test_x_rate_limit_yields_retry_after_from_x_rate_limit_reset(xfake: XFake) -> None:
    xfake.rate_limit(seconds=900)
    error = failure_of(x_client(xfake).publish, make_post())
    assert error.outcome is Outcome.RETRY
    assert error.retry_after is not None and 895 <= error.retry_after <= 901


# -- Threads ----------------------------------------------------------------------------------


@pytest.fixture
def thr() -> Iterator[ThreadsFake]:
    fake = ThreadsFake(token="threads-secret-token-1").start()
    yield fake
    fake.stop()


def threads_client(fake: ThreadsFake, **credentials: Any) -> ThreadsClient:
    creds = {"access_token": fake.token, "user_id": fake.user_id, **credentials}
    return ThreadsClient(Account("newsroom", fake.url, creds), timeout=5)


def test_threads_publish_makes_a_container_then_publishes_it(thr: ThreadsFake) -> None:
    published = threads_client(thr).publish(make_post())

    create, publish, permalink = thr.requests
    assert create.path == f"/v1.0/{thr.user_id}/threads"
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert create.form() == {"media_type": "TEXT", "text": TEXT, "link_attachment": STORY}
    assert publish.path == f"/v1.0/{thr.user_id}/threads_publish"
    assert publish.form() == {"creation_id": next(iter(thr.containers))}
    assert permalink.path == f"/v1.0/{published.remote_id}"
    for request in thr.requests:
        assert request.headers["authorization"] == "Bearer threads-secret-token-1"
        assert "access_token" not in request.query and b"access_token" not in request.body
    (media,) = thr.media
    assert (published.remote_id, published.url) == (media.id, media.permalink)
    assert media.link == STORY


def test_threads_container_failure_is_retry_and_posts_nothing(thr: ThreadsFake) -> None:
    thr.fail_next(
        status=500,
        body={"error": {"message": "An unknown error occurred", "code": 1}},
        path="/threads$",
    )
    error = failure_of(threads_client(thr).publish, make_post())
    assert error.outcome is Outcome.RETRY
    assert thr.media == []


def test_threads_unclear_publish_then_read_back_finds_the_post(thr: ThreadsFake) -> None:
    client, post = threads_client(thr), make_post()
    assert client.find_published(post) is None
    thr.fail_next(
        status=500,
        body={"error": {"message": "unknown", "code": 2, "is_transient": True}},
        after_effect=True,
        path="threads_publish",
    )

    assert failure_of(client.publish, post).outcome is Outcome.UNCLEAR
    found = client.find_published(post)

    assert found is not None and found.remote_id == thr.media[0].id
    assert found.url == thr.media[0].permalink
    assert len(thr.media) == 1


def test_threads_permalink_failure_does_not_fail_the_post(thr: ThreadsFake) -> None:
    thr.fail_next(status=500, method="GET")
    published = threads_client(thr).publish(make_post())
    assert published.remote_id == thr.media[0].id and published.url is None


@pytest.mark.parametrize(
    ("status", "error", "path", "outcome"),
    [
        (
            400,
            {"message": "Error validating access token", "code": 190, "error_subcode": 463},
            "threads$",
            Outcome.REAUTH,
        ),
        (
            400,
            {"message": "(#4) Application request limit reached", "code": 4, "is_transient": True},
            "threads_publish",
            Outcome.RETRY,
        ),
        (400, {"message": "(#10) Permission denied", "code": 10}, "threads$", Outcome.GIVE_UP),
        (
            400,
            {"message": "(#100) Invalid parameter", "code": 100},
            "threads_publish",
            Outcome.GIVE_UP,
        ),
        (
            400,
            {"message": "(#9007) Media ID is not available", "code": 9007},
            "threads_publish",
            Outcome.RETRY,
        ),
        (
            500,
            {"message": "Service temporarily unavailable", "code": 2},
            "threads_publish",
            Outcome.UNCLEAR,
        ),
        (500, {"message": "Service temporarily unavailable", "code": 2}, "threads$", Outcome.RETRY),
        (401, {"message": "unauthorized"}, "threads$", Outcome.REAUTH),
    ],
)
def test_threads_decision_table(
    thr: ThreadsFake, status: int, error: dict[str, Any], path: str, outcome: Outcome
) -> None:
    thr.fail_next(status=status, body={"error": {"type": "OAuthException", **error}}, path=path)
    failed = failure_of(threads_client(thr).publish, make_post())
    assert (failed.outcome, failed.status) == (outcome, status)
    assert error["message"] in failed.message
    posts = path == "threads_publish"
    assert (
        threads.decide(status, error.get("code"), bool(error.get("is_transient")), posts=posts)
        is outcome
    )
    assert thr.media == []


def test_threads_bad_token_and_too_long_text(thr: ThreadsFake) -> None:
    error = failure_of(threads_client(thr, access_token="expired").publish, make_post())
    assert (error.outcome, error.status) == (Outcome.REAUTH, 400)

    # 100 emoji of 4 bytes each count 400; with the link that is over 500.
    error = failure_of(threads_client(thr).publish, make_post(text="🎉" * 100 + "a" * 101))
    assert error.outcome is Outcome.GIVE_UP and "500 characters" in error.message
    assert thr.media == []


def test_threads_rate_limit_is_retry(thr: ThreadsFake) -> None:
    thr.rate_limit(path="threads_publish")
    error = failure_of(threads_client(thr).publish, make_post())
    assert error.outcome is Outcome.RETRY and thr.media == []


# -- shared -----------------------------------------------------------------------------------


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections (the kernel does, from the backlog) and never
    answers: the request is sent in full, then nothing comes back."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_read_timeout_is_unclear_on_the_post_and_retry_on_a_read(silent_url: str) -> None:
    client = MastodonClient(Account("newsroom", silent_url, {"access_token": "t"}), timeout=0.05)
    assert failure_of(client.publish, make_post()).outcome is Outcome.UNCLEAR
    assert failure_of(client.find_published, make_post()).outcome is Outcome.RETRY


def test_retry_after_reads_every_platform_header() -> None:
    now = 1_700_000_000.0
    assert retry_after({"Retry-After": "12"}, now=now) == 12
    assert retry_after({"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, now=now) == 60
    assert retry_after({"x-rate-limit-reset": str(int(now) + 60)}, now=now) == 60
    assert retry_after({"ratelimit-reset": str(int(now) + 300)}, now=now) == 300
    assert retry_after({"X-RateLimit-Reset": "2023-11-14T22:14:20.000Z"}, now=now) == 60
    assert retry_after({"x-rate-limit-reset": str(int(now) - 5)}, now=now) == 0
    assert retry_after({"Retry-After": "soon"}, now=now) is None
    assert retry_after({}, now=now) is None


def test_credentials_never_reach_messages_or_logs(
    masto: MastodonFake,
    sky: BlueskyFake,
    xfake: XFake,
    thr: ThreadsFake,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Every client, through success, failures whose error text echoes the credential back,
    transport failures and refreshes: no credential in any message or log record."""
    messages: list[str] = []

    def expect_failure(call: Any, *args: Any) -> None:
        error = failure_of(call, *args)
        messages.extend([error.message, str(error), repr(error)])

    masto_account = Account("newsroom", masto.url, {"access_token": masto.token})
    mc = MastodonClient(masto_account)
    mc.publish(make_post("m1"))
    masto.fail_next(status=422, body={"error": f"token {masto.token} rejected"})
    expect_failure(mc.publish, make_post("m2"))
    masto.fail_next(drop=True)
    expect_failure(mc.publish, make_post("m3"))

    sky_acc, _ = sky_account(sky)
    sc = BlueskyClient(sky_acc)
    sc.publish(make_post("b1", card=LinkCard(STORY, "t", "d", image=PNG)))
    sky.expire_access_tokens()
    sc.publish(make_post("b2"))
    sky.fail_next(
        status=400,
        body={"error": "InvalidRequest", "message": f"bad {sky_acc.credentials['accessJwt']}"},
    )
    expect_failure(sc.publish, make_post("b3"))
    expect_failure(
        BlueskyClient(sky_account(sky, app_password="wrong-app-password")[0]).publish, make_post()
    )

    xc = x_client(xfake)
    xc.publish(make_post("x1"))
    xfake.fail_next(status=403, body={"title": "Forbidden", "detail": f"no {xfake.access_token}"})
    expect_failure(xc.publish, make_post("x2"))
    expect_failure(x_client(xfake, access_token_secret="wrong-token-secret").publish, make_post())

    tc = threads_client(thr)
    tc.publish(make_post("t1"))
    thr.fail_next(status=400, body={"error": {"message": f"bad token {thr.token}", "code": 190}})
    expect_failure(tc.publish, make_post("t2"))
    expect_failure(
        ThreadsClient(Account("n", closed_port_url(), {"access_token": thr.token})).publish,
        make_post(),
    )

    secrets = {
        masto.token,
        sky.app_password,
        "wrong-app-password",
        xfake.consumer_secret,
        xfake.access_token,
        xfake.access_token_secret,
        "wrong-token-secret",
        thr.token,
        *sky.issued,
    }
    assert any("[redacted]" in m for m in messages)
    text = "\n".join(messages + [r.getMessage() for r in logs.records] + [logs.text])
    assert logs.records  # the clients and urllib3 did log
    for secret in secrets:
        assert secret not in text
