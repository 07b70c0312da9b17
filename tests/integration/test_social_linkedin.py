"""The LinkedIn client against a fake versioned Posts API on 127.0.0.1: the article post and
its headers, little-text escaping (LinkedIn silently cuts a post at an unescaped reserved
character), every row of the decision table, the transport failures, read-back after an
unclear failure, and the access token kept out of every error message and log line."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest
import requests

from digest.social.clients import linkedin
from digest.social.clients.linkedin import (
    LINKEDIN_VERSION,
    STATUS_OUTCOMES,
    LinkedInClient,
    little_text,
)
from digest.social.platform import Account, Outcome, Post
from tests.social_fakes.base import Failure
from tests.social_fakes.client_checks import CARD, failure, post_once
from tests.social_fakes.linkedin import LinkedInFake, linkedin_error, read_little
from tests.support import free_port

ORGANIZATION = "2414183"
AUTHOR = f"urn:li:organization:{ORGANIZATION}"
TOKEN = "AQV-linkedin-secret-access-token-8Xk2"
POST = Post(key="story-17:linkedin-1:default", text="Council passes the budget.", card=CARD)
# Every reserved character, a hashtag, and things that look like little elements.
HOSTILE = (
    "Budget (2026): cuts to <schools> & [labs] {hashtag|#|x} a|b ~ *bold* _it_ "
    "back\\slash @[Acme](urn:li:organization:1) email@example.org #Politics C# page#top ## "
    "https://news.example/a_(b)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[LinkedInFake]:
    # One server for the module: stopping one takes half a second.
    fake = LinkedInFake(ORGANIZATION, TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: LinkedInFake) -> LinkedInFake:
    return server.reset()


@pytest.fixture
def client(fake: LinkedInFake) -> Callable[..., LinkedInClient]:
    def make(*, base_url: str | None = None, timeout: float = 5.0, **credentials: str):
        account = Account(
            handle="Newsroom",
            base_url=base_url or fake.url,
            credentials={"access_token": TOKEN, "organization_id": ORGANIZATION, **credentials},
        )
        return LinkedInClient(account, timeout=timeout)

    return make


def test_publish_makes_one_article_post_for_the_organisation(fake, client):
    published = client().publish(POST)

    (stored,) = fake.posts
    assert published.remote_id == stored["id"]
    assert published.url == f"https://www.linkedin.com/feed/update/{stored['id']}/"
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/rest/posts")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["linkedin-version"] == LINKEDIN_VERSION
    assert request.headers["x-restli-protocol-version"] == "2.0.0"
    assert request.json() == {
        "author": AUTHOR,
        "commentary": "Council passes the budget.",
        "visibility": "PUBLIC",
        "distribution": {
            "feedDistribution": "MAIN_FEED",
            "targetEntities": [],
            "thirdPartyDistributionChannels": [],
        },
        "content": {
            "article": {"source": CARD.url, "title": CARD.title, "description": CARD.description}
        },
        "lifecycleState": "PUBLISHED",
        "isReshareDisabledByAuthor": False,
    }


def test_an_organisation_urn_is_taken_as_it_is(fake, client):
    client(organization_id=AUTHOR).publish(POST)

    assert fake.posts[0]["author"] == AUTHOR


def test_reserved_characters_are_escaped_so_linkedin_shows_the_whole_text(fake, client):
    # Sent raw, LinkedIn would cut the post at "(" and still answer 201.
    assert read_little(HOSTILE) == ("Budget ", True)

    client().publish(Post(POST.key, HOSTILE, CARD))

    (stored,) = fake.posts
    assert (stored["shown"], stored["cut"]) == (HOSTILE, False)
    # The hashtag stays little's hashtag element; every other reserved character is escaped.
    assert "#Politics" in stored["commentary"]
    assert "C\\# page\\#top \\#\\#" in stored["commentary"]


@pytest.mark.parametrize(
    ("text", "commentary"),
    [
        ("plain text, 100% fine!", "plain text, 100% fine!"),
        ("f(x) = [a] {b} <c>", "f\\(x\\) = \\[a\\] \\{b\\} \\<c\\>"),
        ("a|b ~c *d* _e_ \\f @g", "a\\|b \\~c \\*d\\* \\_e\\_ \\\\f \\@g"),
        ("#Budget #2026 #city_hall", "#Budget #2026 #city\\_hall"),
        ("C# x#y # #", "C\\# x\\#y \\# \\#"),
    ],
)
def test_little_text(text, commentary):
    assert little_text(text) == commentary
    assert read_little(commentary) == (text, False)


def test_find_published_reads_the_organisation_back_by_source_and_text(fake, client):
    linkedin_client = client()
    made = linkedin_client.publish(Post(POST.key, HOSTILE, CARD))

    found = linkedin_client.find_published(Post(POST.key, HOSTILE, CARD))

    assert found == made
    read = fake.requests[-1]
    assert (read.method, read.path) == ("GET", "/rest/posts")
    assert read.query["q"] == ["author"] and read.query["author"] == [AUTHOR]
    assert read.headers["x-restli-method"] == "FINDER"
    assert read.headers["linkedin-version"] == LINKEDIN_VERSION


def test_another_variant_of_the_same_story_is_not_taken_for_this_post(fake, client):
    linkedin_client = client()
    linkedin_client.publish(Post("story-17:linkedin-1:morning", "Morning: it passed.", CARD))

    assert linkedin_client.find_published(POST) is None


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"X-Restli-Protocol-Version": "2.0.0"}, 400, "VERSION_MISSING"),
        (
            {"LinkedIn-Version": "202001", "X-Restli-Protocol-Version": "2.0.0"},
            426,
            "NONEXISTENT_VERSION",
        ),
        ({"LinkedIn-Version": LINKEDIN_VERSION}, 400, "ILLEGAL_ARGUMENT"),
    ],
    ids=["no-version", "retired-version", "no-restli-protocol"],
)
def test_the_fake_demands_the_versioned_api_headers(fake, headers, status, code):
    answer = requests.post(
        fake.url + "/rest/posts",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}", **headers},
        timeout=5,
    )

    assert answer.status_code == status
    assert answer.json()["status"] == status and answer.json()["code"] == code


@pytest.mark.parametrize(("status", "outcome"), sorted(STATUS_OUTCOMES.items()))
def test_every_row_of_the_decision_table(fake, client, status, outcome):
    fake.fail_next(status=status, body=linkedin_error(status, "LinkedIn said no"))

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.status) == (outcome, status)
    assert "LinkedIn said no" in error.message
    assert fake.posts == []


@pytest.mark.parametrize(
    ("credentials", "state", "text", "outcome", "says"),
    [
        (
            {"access_token": "AQV-another-token"},
            "valid",
            POST.text,
            Outcome.REAUTH,
            "INVALID_ACCESS_TOKEN",
        ),
        ({}, "revoked", POST.text, Outcome.REAUTH, "REVOKED_ACCESS_TOKEN"),
        ({"access_token": ""}, "valid", POST.text, Outcome.REAUTH, "no access_token"),
        ({"organization_id": "1"}, "valid", POST.text, Outcome.GIVE_UP, "content admin"),
        ({}, "valid", "x" * 3001, Outcome.GIVE_UP, "exceeded the maximum allowed (3000"),
    ],
    ids=["wrong-token", "revoked-token", "no-token", "not-our-organisation", "too-long"],
)
def test_what_linkedin_refuses(fake, client, credentials, state, text, outcome, says):
    fake.token_state = state

    error = failure(lambda: client(**credentials).publish(Post(POST.key, text, CARD)))

    assert error.outcome is outcome
    assert says in error.message
    assert fake.posts == []


def test_a_retired_api_version_is_given_up_with_the_reason(fake, client, monkeypatch):
    monkeypatch.setattr(linkedin, "LINKEDIN_VERSION", "202001")

    error = failure(lambda: client().publish(POST))

    assert (error.outcome, error.status) == (Outcome.GIVE_UP, 426)
    assert "Requested version 202001 is not active" in error.message


def test_a_throttle_is_retried(fake, client):
    fake.rate_limit()
    fake.rate_limit(headers={"Retry-After": "120"})

    first = failure(lambda: client().publish(POST))
    second = failure(lambda: client().publish(POST))

    assert (first.outcome, first.retry_after) == (Outcome.RETRY, None)
    assert (second.outcome, second.retry_after) == (Outcome.RETRY, 120.0)
    assert fake.posts == []


@pytest.mark.parametrize(
    "injected",
    [
        Failure(status=500, body=linkedin_error(500, "Internal Server Error"), after_effect=True),
        Failure(status=504, body=b"<html>Gateway Timeout</html>", after_effect=True),
        Failure(status=201, body=None, after_effect=True),
        Failure(drop=True, after_effect=True),
    ],
    ids=["500-after-posting", "504-from-a-proxy", "201-without-a-urn", "dropped-after-posting"],
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


def test_the_access_token_is_in_no_error_message_and_no_log_line(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    fake.rate_limit()
    fake.fail_next(status=401, body=linkedin_error(401, f"Invalid access token {TOKEN}"))
    fake.fail_next(status=500, body=linkedin_error(500, f"echo {TOKEN}"), after_effect=True)
    fake.fail_next(drop=True)
    for _ in range(4):
        errors.append(failure(lambda: client().publish(POST)))
    errors.append(failure(lambda: client(base_url=f"http://127.0.0.1:{free_port()}").publish(POST)))
    client().find_published(POST)

    assert all(TOKEN not in error.message and TOKEN not in str(error) for error in errors)
    assert [r for r in caplog.records if r.name.startswith("digest")], "nothing was logged"
    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]
