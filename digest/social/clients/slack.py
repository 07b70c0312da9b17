"""Slack: one message per post through an incoming webhook.

The message is the post's text with the story's link in it (added when the text lacks it),
sent with ``unfurl_links`` so Slack draws the story card from the page. Slack answers a plain
``ok``; errors are plain strings with an HTTP status (``invalid_payload``, ``no_service``,
``channel_is_archived``, …), and the string decides before the status.

Slack cuts text over 40,000 characters and posts the rest without an error, so such a post is
refused here before anything is sent.

The webhook URL is the credential: whoever has it can post. Only its path is used
(``/services/T…/B…/…``, checked to be a Slack webhook URL), joined to the account's base URL,
so a pasted URL can never point the worker at another host, and tests point the base URL at a
local server. The URL's secret never appears in a message: ``Api`` redacts it.

No message id comes back, so ``Published.remote_id`` is ``slack-webhook:<post key>``: stable
for the post, unique per social post row, and plainly not a Slack message timestamp. No
read-back either: an incoming webhook cannot read the channel, and there is no idempotency
key, so ``find_published`` raises ``PlatformError(UNCLEAR)``; the queue must mark the post
``unknown`` and never post it again by itself.

Credentials: ``webhook_url`` (``https://hooks.slack.com/services/T…/B…/…``).
"""

from __future__ import annotations

import logging
import re
from typing import ClassVar

import requests

from digest.social.http import Api, status_outcome, webhook_match, webhook_path
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

WEBHOOK_HOSTS = frozenset({"hooks.slack.com"})
_WEBHOOK_PATH = re.compile(r"/services/(?P<team>T\w+)/(?P<hook>B\w+)/(?P<secret>\w+)/?")
TEXT_LIMIT = 40000

RECONNECT = "add a new incoming webhook for the channel and connect it again"
# Slack's error strings (https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-
# incoming-webhooks), with what an editor can do about each.
ERROR_OUTCOMES: dict[str, tuple[Outcome, str | None]] = {
    "invalid_payload": (Outcome.GIVE_UP, None),
    "no_text": (Outcome.GIVE_UP, None),
    "user_not_found": (Outcome.GIVE_UP, None),
    "invalid_token": (Outcome.GIVE_UP, "the webhook was revoked; " + RECONNECT),
    "no_service": (Outcome.GIVE_UP, "the webhook was removed or disabled; " + RECONNECT),
    "no_team": (Outcome.GIVE_UP, "the workspace is gone; " + RECONNECT),
    "channel_not_found": (Outcome.GIVE_UP, "the channel was deleted; " + RECONNECT),
    "channel_is_archived": (
        Outcome.GIVE_UP,
        "the channel is archived; unarchive it or connect a webhook for another channel",
    ),
    "action_prohibited": (
        Outcome.GIVE_UP,
        "a workspace admin restricts what this webhook may post",
    ),
    "rate_limited": (Outcome.RETRY, None),
    "rollup_error": (Outcome.UNCLEAR, None),
}
# For an answer whose body is no known string. A webhook has no token to refresh: 401, 403
# and 404 mean it is gone.
STATUS_OUTCOMES: dict[int, Outcome] = {
    400: Outcome.GIVE_UP,
    401: Outcome.GIVE_UP,
    403: Outcome.GIVE_UP,
    404: Outcome.GIVE_UP,
    410: Outcome.GIVE_UP,
    429: Outcome.RETRY,
}

NO_READ_BACK = (
    "slack: an incoming webhook cannot read the channel, so whether this post landed is "
    "unknown; check the channel before posting it again"
)


def _webhook(url: object) -> re.Match[str] | None:
    return webhook_match(url, WEBHOOK_HOSTS, _WEBHOOK_PATH)


def decide(status: int, error: str | None, *, posts: bool) -> Outcome:
    if error in ERROR_OUTCOMES:
        outcome = ERROR_OUTCOMES[error][0]
        return Outcome.RETRY if outcome is Outcome.UNCLEAR and not posts else outcome
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


def remote_id(post: Post) -> str:
    return f"slack-webhook:{post.key}"


class SlackClient:
    platform: ClassVar[str] = "slack"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(self.platform, account.base_url, timeout=timeout, secrets=self._secrets)

    def publish(self, post: Post) -> Published:
        text = post.text if post.card.url in post.text else f"{post.text}\n{post.card.url}"
        if len(text) > TEXT_LIMIT:
            raise PlatformError(
                f"slack: the text is {len(text)} characters; Slack would cut it to "
                f"{TEXT_LIMIT} and post the rest",
                Outcome.GIVE_UP,
            )
        response = self.api.send(
            "POST",
            self._webhook_path(),
            posts=True,
            json={"text": text, "unfurl_links": True},
        )
        if not response.ok:
            raise self._error(response)
        log.info("slack: posted %s", post.key)
        return Published(remote_id=remote_id(post))

    def find_published(self, post: Post) -> Published | None:
        raise PlatformError(NO_READ_BACK, Outcome.UNCLEAR)

    def _webhook_path(self) -> str:
        return webhook_path(
            _webhook(self.account.credentials.get("webhook_url")),
            "slack: the account has no Slack incoming webhook URL "
            "(https://hooks.slack.com/services/…); connect it again",
        )

    def _secrets(self) -> list[object]:
        url = self.account.credentials.get("webhook_url")
        match = _webhook(url)
        # The whole URL, and its secret, which is what a message would show (in the path).
        return [url, match["secret"] if match else None]

    def _error(self, response: requests.Response) -> PlatformError:
        # Slack's body is one short word; anything longer is a proxy's page, not Slack's.
        body = response.text.strip()
        error = body if re.fullmatch(r"[a-z_]{2,64}", body) else None
        outcome = decide(response.status_code, error, posts=True)
        hint = ERROR_OUTCOMES.get(error or "", (outcome, None))[1]
        detail = f"{error}; {hint}" if error and hint else error
        return self.api.error(response, outcome, detail)
