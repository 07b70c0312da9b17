"""The Facebook Page client against a fake Graph API on 127.0.0.1: the Page post, every row
of the decision table (Graph's error codes), throttling with the usage headers, the transport
failures, read-back after an unclear failure, and the page token kept out of every error
message and log line."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs

import pytest

from digest.social.clients.facebook import CODE_OUTCOMES, GRAPH_VERSION, FacebookClient
from digest.social.platform import Account, LinkCard, Outcome, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.client_checks import CARD, failure, post_once
from tests.social_fakes.facebook import FacebookFake, graph_error
from tests.support import free_port

PAGE_ID = "104857600123456"
TOKEN = "EAAGm0PX4ZCpsBO-page-secret-token-ZBZCZD"
POST = Post(key="story-17:facebook-1:default", text="Council passes the budget.", card=CARD)


@pytest.fixture(scope="module")
def server() -> Iterator[FacebookFake]:
    # One server for the module: stopping one takes half a second.
    fake = FacebookFake(PAGE_ID, TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: FacebookFake) -> FacebookFake:
    return server.reset()


@pytest.fixture
def client(fake: FacebookFake) -> Callable[..., FacebookClient]:
    def make(*, base_url: str | None = None, timeout: float = 5.0, **credentials: str):
        account = Account(
            handle="Newsroom",
            base_url=base_url or fake.url,
            credentials={"page_id": PAGE_ID, "access_token": TOKEN, **credentials},
        )
        return FacebookClient(account, timeout=timeout)

    return make


def test_publish_makes_one_page_post_with_the_story_link(fake, client):
    published = client().publish(POST)

    (stored,) = fake.posts
    assert published.remote_id == stored["id"]
    assert stored["id"].startswith(PAGE_ID + "_")
    assert (stored["message"], stored["link"]) == (POST.text, CARD.url)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/{GRAPH_VERSION}/{PAGE_ID}/feed")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {"message": [POST.text], "link": [CARD.url]}
    # The token rides in the header, never in a URL that logs and exception texts keep.
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.query == {}


def test_find_published_reads_the_page_back_by_link_and_text(fake, client):
    facebook = client()
    made = facebook.publish(POST)

    found = facebook.find_published(POST)

    assert found is not None
    assert found.remote_id == made.remote_id
    assert found.url == f"https://www.facebook.com/{PAGE_ID}/posts/{made.remote_id.split('_')[1]}"
    read = fake.requests[-1]
    assert read.path == f"/{GRAPH_VERSION}/{PAGE_ID}/published_posts"
    assert read.query["fields"] == ["id,message,permalink_url,attachments{unshimmed_url,url}"]


def test_another_variant_of_the_same_story_is_not_taken_for_this_post(fake, client):
    facebook = client()
    facebook.publish(Post("story-17:facebook-1:morning", "Morning: the budget passed.", CARD))

    assert facebook.find_published(POST) is None
    assert (
        facebook.find_published(
            Post(
                "story-99:facebook-1:default",
                POST.text,
                LinkCard("https://news.example/other", "t", "d"),
            )
        )
        is None
    )


@pytest.mark.parametrize(("code", "outcome"), sorted(CODE_OUTCOMES.items()))
def test_every_row_of_the_decision_table(fake, client, code, outcome):
    fake.fail_next(status=400, body=graph_error(f"(#{code}) Graph said no", code), method="POST")

    error = failure(lambda: client().publish(POST))

    assert error.outcome is outcome
    assert f"Graph said no (code {code})" in error.message
    assert fake.posts == []


@pytest.mark.parametrize("code", [200, 230, 299])
def test_permission_codes_ask_for_a_new_connection(fake, client, code):
    fake.fail_next(status=403, body=graph_error(f"(#{code}) Permissions error", code))

    assert failure(lambda: client().publish(POST)).outcome is Outcome.REAUTH


def test_server_trouble_on_a_read_is_simply_retried(fake, client):
    fake.fail_next(status=500, body=graph_error("An unknown error occurred", 1, kind="Exc"))

    assert failure(lambda: client().find_published(POST)).outcome is Outcome.RETRY


@pytest.mark.parametrize(
    ("credentials", "state", "text", "outcome", "says"),
    [
        ({"access_token": "EAAG-some-other-token"}, "valid", POST.text, Outcome.REAUTH, "code 190"),
        ({}, "expired", POST.text, Outcome.REAUTH, "subcode 463: the token expired"),
        ({"access_token": ""}, "valid", POST.text, Outcome.REAUTH, "no access_token"),
        ({"page_id": "999"}, "valid", POST.text, Outcome.REAUTH, "code 200"),
        ({}, "valid", "x" * 63207, Outcome.GIVE_UP, "at most 63206 characters"),
    ],
    ids=["wrong-token", "expired-token", "no-token", "not-our-page", "too-long"],
)
def test_what_graph_refuses(fake, client, credentials, state, text, outcome, says):
    fake.token_state = state

    error = failure(lambda: client(**credentials).publish(Post(POST.key, text, CARD)))

    assert error.outcome is outcome
    assert says in error.message
    assert fake.posts == []


def test_a_throttled_page_waits_as_long_as_graph_estimates(fake, client):
    fake.throttle(code=32, minutes=3)

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.retry_after) == (Outcome.RETRY, 180.0)
    assert "page usage call_count 100%" in error.message
    assert fake.posts == []


@pytest.mark.parametrize("code", [4, 17, 613])
def test_app_and_user_limits_say_how_full_the_bucket_is(fake, client, code):
    fake.fail_next(
        status=400,
        body=graph_error(f"(#{code}) Application request limit reached", code),
        headers={
            "X-App-Usage": json.dumps({"call_count": 100, "total_cputime": 8, "total_time": 9})
        },
    )

    error = failure(lambda: client().publish(POST))

    # X-App-Usage gives percentages, not a time: the queue's own backoff decides.
    assert (error.outcome, error.retry_after) == (Outcome.RETRY, None)
    assert "app usage call_count 100%" in error.message


@pytest.mark.parametrize(
    "injected",
    [
        Failure(status=500, body=graph_error("An unknown error occurred", 1), after_effect=True),
        Failure(status=503, body=b"<html>Service Unavailable</html>", after_effect=True),
        Failure(status=200, body=b"<html>Welcome to the hotel wifi</html>", after_effect=True),
        Failure(drop=True, after_effect=True),
    ],
    ids=["500-after-posting", "503-from-a-proxy", "200-from-a-proxy", "dropped-after-posting"],
)
def test_a_post_that_landed_behind_an_error_is_read_back_not_repeated(fake, client, injected):
    fake.fail_next(injected)

    published = post_once(client(), POST)

    (stored,) = fake.posts
    assert published.remote_id == stored["id"]
    assert [r.method for r in fake.requests] == ["POST", "GET"]


def test_a_post_that_never_landed_is_made_once_after_the_read_back(fake, client):
    fake.fail_next(drop=True, method="POST")

    published = post_once(client(), POST)

    (stored,) = fake.posts
    assert published.remote_id == stored["id"]
    assert [r.method for r in fake.requests] == ["POST", "GET", "POST"]


def test_no_answer_in_time_is_unclear(client):
    with socket.socket() as silent:
        # Listening but never accepting: the request is sent and no answer ever comes.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = client(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        assert failure(lambda: slow.publish(POST)).outcome is Outcome.UNCLEAR
        assert failure(lambda: slow.find_published(POST)).outcome is Outcome.RETRY


def test_a_refused_connection_sent_nothing_and_is_retried(client):
    error = failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST))

    assert error.outcome is Outcome.RETRY


def test_the_page_token_is_in_no_error_message_and_no_log_line(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    fake.throttle()
    fake.fail_next(status=400, body=graph_error(f"Invalid token {TOKEN}", 190))
    fake.fail_next(status=500, body=graph_error(f"echo {TOKEN}", 2), after_effect=True)
    fake.fail_next(drop=True)
    for _ in range(4):
        errors.append(failure(lambda: client().publish(POST)))
    errors.append(failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST)))
    client().find_published(POST)

    assert all(TOKEN not in error.message and TOKEN not in str(error) for error in errors)
    assert [r for r in caplog.records if r.name.startswith("digest")], "nothing was logged"
    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]
