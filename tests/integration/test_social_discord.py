"""The Discord webhook client against a fake Execute Webhook endpoint on 127.0.0.1: the
message and its link, mentions that never ping, every row of the decision table, rate limits,
the transport failures, the no-read-back contract, and the webhook token kept out of every
error message and log line."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest
import requests

from digest.social.clients.discord import STATUS_OUTCOMES, DiscordClient
from digest.social.platform import Account, Outcome, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.client_checks import CARD, failure
from tests.social_fakes.discord import DiscordFake
from tests.support import free_port

WEBHOOK_ID = "1234567890123456789"
TOKEN = "Xk2mN8-webhook_secret_token-9pQrStUvWxYz0123456789abcdefGHIJ"
WEBHOOK_URL = f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
POST = Post(key="story-17:discord-1:default", text="Council passes the budget", card=CARD)


@pytest.fixture(scope="module")
def server() -> Iterator[DiscordFake]:
    # One server for the module: stopping one takes half a second.
    fake = DiscordFake(WEBHOOK_ID, TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: DiscordFake) -> DiscordFake:
    return server.reset()


@pytest.fixture
def client(fake: DiscordFake) -> Callable[..., DiscordClient]:
    def make(*, base_url: str | None = None, timeout: float = 5.0, **credentials: str):
        account = Account(
            handle="#news",
            base_url=base_url or fake.url,
            credentials={"webhook_url": WEBHOOK_URL, **credentials},
        )
        return DiscordClient(account, timeout=timeout)

    return make


def test_publish_posts_one_message_whose_link_discord_unfurls(fake, client):
    published = client().publish(POST)

    (stored,) = fake.posts
    assert published.remote_id == stored["id"]
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}")
    assert request.query == {"wait": ["true"]}
    assert request.json() == {
        "content": f"{POST.text}\n{CARD.url}",
        "allowed_mentions": {"parse": []},
    }


def test_a_text_that_has_the_link_gets_no_second_copy(fake, client):
    client().publish(Post(POST.key, f"Read: {CARD.url} (updated)", CARD))

    assert fake.posts[0]["json"]["content"] == f"Read: {CARD.url} (updated)"


def test_a_headline_never_pings_anyone(fake, client):
    headline = "@everyone @here <@80351110224678912> <@!80351110224678912> <@&41771983423143936>"

    client().publish(Post(POST.key, headline, CARD))

    assert fake.posts[0]["pings"] == {"everyone": False, "users": [], "roles": []}


def test_without_allowed_mentions_the_same_headline_would_ping(fake):
    # The fake's ping rule is Discord's: what the test above guards against is real.
    requests.post(
        fake.url + fake.path, json={"content": "@everyone <@80351110224678912>"}, timeout=5
    )

    assert fake.posts[0]["pings"] == {
        "everyone": True,
        "users": ["80351110224678912"],
        "roles": [],
    }


@pytest.mark.parametrize(
    ("allowed", "error"),
    [
        ({"parse": ["users"], "users": ["1"]}, "mutually exclusive"),
        ({"parse": ["channels"]}, "Value must be one of"),
        ({"parse": "everyone"}, "Must be a list"),
    ],
)
def test_the_fake_checks_allowed_mentions_as_discord_does(fake, allowed, error):
    answer = requests.post(
        fake.url + fake.path, json={"content": "hi", "allowed_mentions": allowed}, timeout=5
    )

    assert answer.status_code == 400
    assert answer.json()["code"] == 50035
    assert error in str(answer.json()["errors"])
    assert fake.posts == []


@pytest.mark.parametrize(("status", "outcome"), sorted(STATUS_OUTCOMES.items()))
def test_every_row_of_the_decision_table(fake, client, status, outcome):
    fake.fail_next(status=status, body={"message": "Discord said no", "code": 40000 + status})

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.status) == (outcome, status)
    assert "Discord said no" in error.message
    assert fake.posts == []


@pytest.mark.parametrize(
    ("credentials", "text", "says"),
    [
        ({}, "x" * 2001, "content: Must be 2000 or fewer in length"),
        (
            {"webhook_url": WEBHOOK_URL.replace(TOKEN, "reset-token")},
            POST.text,
            "Invalid Webhook Token (50027); the webhook was deleted",
        ),
        (
            {"webhook_url": WEBHOOK_URL.replace(WEBHOOK_ID, "42")},
            POST.text,
            "Unknown Webhook (10015); the webhook was deleted",
        ),
        ({"webhook_url": ""}, POST.text, "no Discord webhook URL"),
        (
            {"webhook_url": f"https://evil.example/api/webhooks/{WEBHOOK_ID}/{TOKEN}"},
            POST.text,
            "no Discord webhook URL",
        ),
        (
            {"webhook_url": f"http://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}"},
            POST.text,
            "no Discord webhook URL",
        ),
        (
            {"webhook_url": "https://[discord.com/api/webhooks/1/x"},
            POST.text,
            "no Discord webhook URL",
        ),
    ],
    ids=[
        "too-long",
        "reset-token",
        "deleted-webhook",
        "none",
        "other-host",
        "not-https",
        "unparseable",
    ],
)
def test_what_discord_refuses(fake, client, credentials, text, says):
    error = failure(lambda: client(**credentials).publish(Post(POST.key, text, CARD)))

    assert error.outcome is Outcome.GIVE_UP
    assert says in error.message
    assert fake.posts == []


def test_a_rate_limit_is_retried_after_discords_exact_wait(fake, client):
    fake.rate_limit(retry_after=1.337)

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.retry_after, error.status) == (Outcome.RETRY, 1.337, 429)


def test_without_a_body_the_reset_after_header_says_how_long(fake, client):
    fake.fail_next(status=429, body=b"", headers={"X-RateLimit-Reset-After": "2.5"})

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.retry_after) == (Outcome.RETRY, 2.5)


@pytest.mark.parametrize(
    "injected",
    [
        Failure(
            status=500, body={"message": "500: Internal Server Error", "code": 0}, after_effect=True
        ),
        Failure(status=502, body=b"<html>Bad Gateway</html>", after_effect=True),
        Failure(status=200, body=b"<html>Welcome to the hotel wifi</html>", after_effect=True),
        Failure(drop=True, after_effect=True),
        Failure(drop=True),
    ],
    ids=[
        "500-after-posting",
        "502-from-a-proxy",
        "200-from-a-proxy",
        "dropped-after-posting",
        "dropped-unread",
    ],
)
def test_a_failure_after_sending_is_unclear(fake, client, injected):
    fake.fail_next(injected)

    assert failure(lambda: client().publish(POST)).outcome is Outcome.UNCLEAR


def test_no_answer_in_time_is_unclear(client):
    with socket.socket() as silent:
        # Listening but never accepting: the request is sent and no answer ever comes.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = client(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        assert failure(lambda: slow.publish(POST)).outcome is Outcome.UNCLEAR


def test_a_refused_connection_sent_nothing_and_is_retried(client):
    error = failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST))

    assert error.outcome is Outcome.RETRY


def test_an_unclear_post_is_never_repeated_because_a_webhook_cannot_read_back(fake, client):
    """The queue's rule: after UNCLEAR, read back; a read-back that is itself UNCLEAR means
    the post becomes ``unknown`` and is not sent again by itself."""
    fake.fail_next(
        status=500, body={"message": "500: Internal Server Error", "code": 0}, after_effect=True
    )
    discord = client()

    assert failure(lambda: discord.publish(POST)).outcome is Outcome.UNCLEAR
    read_back = failure(lambda: discord.find_published(POST))

    assert read_back.outcome is Outcome.UNCLEAR
    assert "check the channel" in read_back.message
    assert len(fake.posts) == 1
    assert len(fake.requests) == 1


def test_the_webhook_token_is_in_no_error_message_and_no_log_line(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    fake.rate_limit(retry_after=0.5)
    fake.fail_next(status=404, body={"message": f"Unknown Webhook {TOKEN}", "code": 10015})
    fake.fail_next(status=500, body={"message": f"echo {WEBHOOK_URL}"}, after_effect=True)
    fake.fail_next(drop=True)
    for _ in range(4):
        errors.append(failure(lambda: client().publish(POST)))
    errors.append(failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST)))
    errors.append(failure(lambda: client().find_published(POST)))
    client().publish(POST)

    assert all(TOKEN not in error.message and TOKEN not in str(error) for error in errors)
    assert [r for r in caplog.records if r.name.startswith("digest")], "nothing was logged"
    # urllib3's own request lines are the subject of the next test.
    leaks = [r for r in caplog.records if not r.name.startswith("urllib3")]
    assert not [r.getMessage() for r in leaks if TOKEN in r.getMessage()]


def test_urllib3_debug_lines_do_not_carry_the_webhook_token(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    client().publish(POST)

    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]
