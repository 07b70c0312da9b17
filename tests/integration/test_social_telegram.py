"""The Telegram client against a fake Bot API on 127.0.0.1: the message and its link preview,
every row of the decision table, the transport failures, the no-read-back contract, and the
bot token (which is in every URL) kept out of every error message and log line."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest

from digest.social.clients.telegram import STATUS_OUTCOMES, TelegramClient
from digest.social.platform import Account, Outcome, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.client_checks import CARD, failure
from tests.social_fakes.telegram import Channel, TelegramFake, telegram_error
from tests.support import free_port

TOKEN = "7012345678:AAHk3xQ9-secret_Token-zz0123456789"
CHANNEL = Channel(-1001234567890, "newsroom", "Newsroom")
PRIVATE = Channel(-1005550001111, None, "Newsroom staff")
LOCKED = Channel(-1009990001111, "locked", "Not ours", bot_is_admin=False)
POST = Post(key="story-17:telegram-1:default", text="Council passes the budget", card=CARD)


@pytest.fixture(scope="module")
def server() -> Iterator[TelegramFake]:
    # One server for the module: stopping one takes half a second.
    fake = TelegramFake(TOKEN, [CHANNEL, PRIVATE, LOCKED]).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: TelegramFake) -> TelegramFake:
    return server.reset()


@pytest.fixture
def client(fake: TelegramFake) -> Callable[..., TelegramClient]:
    def make(*, base_url: str | None = None, timeout: float = 5.0, **credentials: str):
        account = Account(
            handle="@newsroom",
            base_url=base_url or fake.url,
            credentials={"bot_token": TOKEN, "chat_id": "@newsroom", **credentials},
        )
        return TelegramClient(account, timeout=timeout)

    return make


def test_publish_posts_one_message_with_the_story_as_its_preview(fake, client):
    published = client().publish(POST)

    assert published.remote_id == f"{CHANNEL.id}/1"
    assert published.url == "https://t.me/newsroom/1"
    assert fake.posts == [
        {
            "chat_id": CHANNEL.id,
            "message_id": 1,
            "text": POST.text,
            "link_preview_options": {
                "url": CARD.url,
                "prefer_large_media": True,
                "show_above_text": False,
            },
        }
    ]
    (request,) = fake.requests
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "chat_id": "@newsroom",
        "text": POST.text,
        "link_preview_options": {
            "url": CARD.url,
            "prefer_large_media": True,
            "show_above_text": False,
        },
    }


def test_a_private_channel_gets_a_members_only_link(fake, client):
    published = client(chat_id=str(PRIVATE.id)).publish(POST)

    assert published.remote_id == f"{PRIVATE.id}/1"
    assert published.url == "https://t.me/c/5550001111/1"


@pytest.mark.parametrize(("status", "outcome"), sorted(STATUS_OUTCOMES.items()))
def test_every_row_of_the_decision_table(fake, client, status, outcome):
    fake.fail_next(status=status, body=telegram_error(status, "Whatever Telegram said"))

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.status) == (outcome, status)
    assert "Whatever Telegram said" in error.message
    assert fake.posts == []


@pytest.mark.parametrize(
    ("credentials", "text", "outcome", "says"),
    [
        ({"chat_id": "@nowhere"}, POST.text, Outcome.GIVE_UP, "chat not found"),
        ({}, "x" * 4097, Outcome.GIVE_UP, "message is too long"),
        ({"chat_id": "@locked"}, POST.text, Outcome.GIVE_UP, "administrator of the channel"),
        (
            {"bot_token": "7012345678:AAHk3xQ9-revoked-Token-zz0123456"},
            POST.text,
            Outcome.REAUTH,
            "@BotFather",
        ),
        ({"bot_token": "not-a-token"}, POST.text, Outcome.REAUTH, "not a Telegram token"),
        ({"bot_token": TOKEN + "\n"}, POST.text, Outcome.REAUTH, "not a Telegram token"),
        ({"bot_token": ""}, POST.text, Outcome.REAUTH, "no bot_token"),
    ],
    ids=[
        "unknown-chat",
        "too-long",
        "bot-not-admin",
        "revoked-token",
        "malformed-token",
        "pasted-with-a-newline",
        "none",
    ],
)
def test_what_telegram_refuses(fake, client, credentials, text, outcome, says):
    error = failure(lambda: client(**credentials).publish(Post(POST.key, text, CARD)))

    assert error.outcome is outcome
    assert says in error.message
    assert fake.posts == []


def test_flood_control_is_retried_after_telegrams_wait(fake, client):
    fake.flood(retry_after=7)

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.retry_after, error.status) == (Outcome.RETRY, 7.0, 429)
    assert client().publish(POST).remote_id == f"{CHANNEL.id}/1"


@pytest.mark.parametrize(
    "injected",
    [
        Failure(status=500, body=telegram_error(500, "Internal Server Error"), after_effect=True),
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

    error = failure(lambda: client().publish(POST))

    assert error.outcome is Outcome.UNCLEAR


def test_no_answer_in_time_is_unclear(client):
    with socket.socket() as silent:
        # Listening but never accepting: the request is sent and no answer ever comes.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = client(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        error = failure(lambda: slow.publish(POST))

    assert error.outcome is Outcome.UNCLEAR


def test_a_refused_connection_sent_nothing_and_is_retried(client):
    error = failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST))

    assert error.outcome is Outcome.RETRY


def test_an_unclear_post_is_never_repeated_because_telegram_cannot_be_read_back(fake, client):
    """The queue's rule: after UNCLEAR, read back; a read-back that is itself UNCLEAR means
    the post becomes ``unknown`` and is not sent again by itself."""
    fake.fail_next(status=500, body=telegram_error(500, "Internal Server Error"), after_effect=True)
    telegram = client()

    assert failure(lambda: telegram.publish(POST)).outcome is Outcome.UNCLEAR
    read_back = failure(lambda: telegram.find_published(POST))

    assert read_back.outcome is Outcome.UNCLEAR
    assert "check the channel" in read_back.message
    assert len(fake.posts) == 1
    # find_published asked nothing of Telegram: there is nothing it could ask.
    assert len(fake.requests) == 1


def test_the_bot_token_is_in_no_error_message_and_no_log_line(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    fake.flood(retry_after=3)
    fake.fail_next(status=500, body=telegram_error(500, f"echo {TOKEN}"), after_effect=True)
    fake.fail_next(drop=True)
    for _ in range(3):
        errors.append(failure(lambda: client().publish(POST)))
    errors.append(failure(lambda: client(chat_id="@locked").publish(POST)))
    errors.append(failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST)))
    errors.append(failure(lambda: client().find_published(POST)))
    client().publish(POST)

    assert all(TOKEN not in error.message and TOKEN not in str(error) for error in errors)
    assert [r for r in caplog.records if r.name.startswith("digest")], "nothing was logged"
    # urllib3's own request lines are the subject of the next test.
    leaks = [r for r in caplog.records if not r.name.startswith("urllib3")]
    assert not [r.getMessage() for r in leaks if TOKEN in r.getMessage()]


def test_urllib3_debug_lines_do_not_carry_the_bot_token(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    client().publish(POST)

    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]
