"""The Slack incoming-webhook client against a fake webhook on 127.0.0.1: the message and its
unfurled link, every row of the decision table (Slack's text/plain error strings), the 40,000
character cut, the transport failures, the no-read-back contract, and the webhook secret kept
out of every error message and log line."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest
import requests

from digest.social.clients.slack import ERROR_OUTCOMES, STATUS_OUTCOMES, SlackClient
from digest.social.platform import Account, Outcome, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.client_checks import CARD, failure
from tests.social_fakes.slack import PLAIN, SlackFake
from tests.support import free_port

TEAM, HOOK, SECRET = "T0001ABCD", "B0002EFGH", "xK9secretWebhookPart0123"
WEBHOOK_URL = f"https://hooks.slack.com/services/{TEAM}/{HOOK}/{SECRET}"
POST = Post(key="story-17:slack-1:default", text="Council passes the budget", card=CARD)
# The status Slack sends with each error string.
ERROR_STATUS = {
    "invalid_payload": 400,
    "no_text": 400,
    "user_not_found": 400,
    "invalid_token": 403,
    "action_prohibited": 403,
    "no_service": 404,
    "no_team": 404,
    "channel_not_found": 404,
    "channel_is_archived": 410,
    "rate_limited": 429,
    "rollup_error": 500,
}


@pytest.fixture(scope="module")
def server() -> Iterator[SlackFake]:
    # One server for the module: stopping one takes half a second.
    fake = SlackFake(TEAM, HOOK, SECRET).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: SlackFake) -> SlackFake:
    return server.reset()


@pytest.fixture
def client(fake: SlackFake) -> Callable[..., SlackClient]:
    def make(*, base_url: str | None = None, timeout: float = 5.0, **credentials: str):
        account = Account(
            handle="#news",
            base_url=base_url or fake.url,
            credentials={"webhook_url": WEBHOOK_URL, **credentials},
        )
        return SlackClient(account, timeout=timeout)

    return make


def test_publish_posts_one_message_with_the_link_unfurled(fake, client):
    published = client().publish(POST)

    assert published.remote_id == f"slack-webhook:{POST.key}"
    assert published.url is None
    assert fake.posts == [
        {
            "json": {"text": f"{POST.text}\n{CARD.url}", "unfurl_links": True},
            "text": f"{POST.text}\n{CARD.url}",
            "truncated": False,
        }
    ]
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/services/{TEAM}/{HOOK}/{SECRET}")
    assert request.headers["content-type"] == "application/json"


def test_the_remote_id_is_the_same_on_every_attempt(fake, client):
    assert client().publish(POST) == client().publish(POST)


def test_the_decision_table_covers_every_error_slack_documents():
    assert set(ERROR_OUTCOMES) == set(ERROR_STATUS)


@pytest.mark.parametrize(("error", "outcome"), [(e, o) for e, (o, _) in ERROR_OUTCOMES.items()])
def test_every_error_string(fake, client, error, outcome):
    fake.fail_next(status=ERROR_STATUS[error], body=error.encode(), headers=PLAIN)

    failed = failure(lambda: client().publish(POST))

    assert (failed.outcome, failed.status) == (outcome, ERROR_STATUS[error])
    assert error in failed.message
    assert fake.posts == []


@pytest.mark.parametrize(("status", "outcome"), sorted(STATUS_OUTCOMES.items()))
def test_every_status_without_a_known_error_string(fake, client, status, outcome):
    fake.fail_next(status=status, body=b"<html>Slack is having trouble</html>", headers=PLAIN)

    failed = failure(lambda: client().publish(POST))

    assert (failed.outcome, failed.status) == (outcome, status)
    assert "<html>" not in failed.message


@pytest.mark.parametrize(
    ("state", "credentials", "says"),
    [
        ("channel_is_archived", {}, "unarchive it"),
        ("action_prohibited", {}, "a workspace admin restricts"),
        ("channel_not_found", {}, "the channel was deleted; add a new incoming webhook"),
        ("no_service", {}, "the webhook was removed or disabled; add a new incoming webhook"),
        (None, {"webhook_url": WEBHOOK_URL.replace(SECRET, "rotated")}, "invalid_token"),
        (None, {"webhook_url": WEBHOOK_URL.replace(HOOK, "B0009ZZZZ")}, "no_service"),
        (None, {"webhook_url": ""}, "no Slack incoming webhook URL"),
        (
            None,
            {"webhook_url": f"https://evil.example/services/{TEAM}/{HOOK}/{SECRET}"},
            "no Slack incoming webhook URL",
        ),
    ],
    ids=[
        "archived",
        "prohibited",
        "channel-gone",
        "webhook-removed",
        "rotated-secret",
        "unknown-webhook",
        "none",
        "other-host",
    ],
)
def test_what_slack_refuses(fake, client, state, credentials, says):
    fake.state = state

    error = failure(lambda: client(**credentials).publish(POST))

    assert error.outcome is Outcome.GIVE_UP
    assert says in error.message
    assert fake.posts == []


def test_text_slack_would_cut_is_refused_before_sending(fake, client):
    error = failure(lambda: client().publish(Post(POST.key, "x" * 40000, CARD)))

    assert error.outcome is Outcome.GIVE_UP
    assert "cut it to 40000" in error.message
    assert fake.requests == []


def test_text_of_exactly_40000_characters_is_sent_whole(fake, client):
    client().publish(Post(POST.key, "x" * (40000 - len(CARD.url) - 1), CARD))

    assert (len(fake.posts[0]["text"]), fake.posts[0]["truncated"]) == (40000, False)


def test_the_fake_cuts_long_text_as_slack_does(fake):
    # What the refusal above protects against: Slack posts the first 40,000 and says "ok".
    answer = requests.post(fake.url + fake.path, json={"text": "x" * 40001}, timeout=5)

    assert (answer.status_code, answer.text) == (200, "ok")
    assert (len(fake.posts[0]["text"]), fake.posts[0]["truncated"]) == (40000, True)


def test_a_rate_limit_is_retried_after_slacks_wait(fake, client):
    fake.rate_limit(retry_after=30)

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.retry_after, error.status) == (Outcome.RETRY, 30.0, 429)


@pytest.mark.parametrize(
    "injected",
    [
        Failure(status=500, body=b"rollup_error", headers=PLAIN, after_effect=True),
        Failure(status=503, body=b"<html>Service Unavailable</html>", after_effect=True),
        Failure(drop=True, after_effect=True),
        Failure(drop=True),
    ],
    ids=[
        "rollup-error-after-posting",
        "503-from-a-proxy",
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
    fake.fail_next(status=500, body=b"rollup_error", headers=PLAIN, after_effect=True)
    slack = client()

    assert failure(lambda: slack.publish(POST)).outcome is Outcome.UNCLEAR
    read_back = failure(lambda: slack.find_published(POST))

    assert read_back.outcome is Outcome.UNCLEAR
    assert "check the channel" in read_back.message
    assert len(fake.posts) == 1
    assert len(fake.requests) == 1


def test_the_webhook_secret_is_in_no_error_message_and_no_log_line(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    fake.rate_limit(retry_after=1)
    fake.fail_next(status=500, body=b"rollup_error", headers=PLAIN, after_effect=True)
    fake.fail_next(drop=True)
    for _ in range(3):
        errors.append(failure(lambda: client().publish(POST)))
    fake.state = "channel_is_archived"
    errors.append(failure(lambda: client().publish(POST)))
    fake.state = None
    errors.append(failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST)))
    errors.append(failure(lambda: client().find_published(POST)))
    client().publish(POST)

    assert all(SECRET not in error.message and SECRET not in str(error) for error in errors)
    assert [r for r in caplog.records if r.name.startswith("digest")], "nothing was logged"
    # urllib3's own request lines are the subject of the next test.
    leaks = [r for r in caplog.records if not r.name.startswith("urllib3")]
    assert not [r.getMessage() for r in leaks if SECRET in r.getMessage()]


def test_urllib3_debug_lines_do_not_carry_the_webhook_secret(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    client().publish(POST)

    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]
