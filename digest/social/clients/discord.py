"""Discord: one message per post through a channel webhook ("Execute Webhook").

The message is the post's text with the story's link in it (added when the text lacks it);
Discord unfurls the link into the card itself, so no embed is sent (an embed of our own next
to the unfurled one would show the story twice). ``allowed_mentions: {"parse": []}`` turns
every mention off: a headline that says "@everyone" or quotes ``<@id>`` pings nobody.
``?wait=true`` makes Discord answer with the message it stored, whose id is the remote id.

The webhook URL is the credential: whoever has it can post. Only its path is used
(``/api/webhooks/{id}/{token}``, checked to be a Discord webhook URL), joined to the account's
base URL, so a pasted URL can never point the worker at another host, and tests point the
base URL at a local server. The token never appears in a message: ``Api`` redacts it.

No read-back. A webhook cannot list a channel's messages, and there is no idempotency key, so
after an unclear failure nobody but a person looking at the channel can tell whether the
message landed. ``find_published`` says exactly that by raising ``PlatformError(UNCLEAR)``:
the queue must mark the post ``unknown`` and never post it again by itself.

Credentials: ``webhook_url`` (``https://discord.com/api/webhooks/{id}/{token}``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import requests

from digest.social.http import (
    Api,
    json_body,
    retry_after,
    status_outcome,
    webhook_match,
    webhook_path,
)
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

WEBHOOK_HOSTS = frozenset(
    {"discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"}
)
_WEBHOOK_PATH = re.compile(r"/api(?:/v\d+)?/webhooks/(?P<id>\d+)/(?P<token>[\w-]+)/?")

# Discord answers {"message", "code", "errors"?}. For a webhook, 401 (50027 Invalid Webhook
# Token), 403 and 404 (10015 Unknown Webhook) all mean the webhook is gone or was reset: no
# token refresh can help, an editor has to make a new one.
STATUS_OUTCOMES: dict[int, Outcome] = {
    400: Outcome.GIVE_UP,  # 50035 Invalid Form Body (content over 2,000 characters, …)
    401: Outcome.GIVE_UP,
    403: Outcome.GIVE_UP,
    404: Outcome.GIVE_UP,
    413: Outcome.GIVE_UP,  # payload too large
    429: Outcome.RETRY,  # retry_after (seconds, a float) in the body
}
RECONNECT = (
    "the webhook was deleted or its URL reset; create a new webhook in the channel's "
    "Integrations settings and connect it again"
)
HINTS: dict[int, str] = {401: RECONNECT, 403: RECONNECT, 404: RECONNECT}

NO_READ_BACK = (
    "discord: a webhook cannot read the channel's messages, so whether this post landed is "
    "unknown; check the channel before posting it again"
)


def _webhook(url: object) -> re.Match[str] | None:
    return webhook_match(url, WEBHOOK_HOSTS, _WEBHOOK_PATH)


def decide(status: int, *, posts: bool) -> Outcome:
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


def discord_retry_after(body: Any, headers: Mapping[str, str]) -> float | None:
    """The body's ``retry_after`` (seconds, to the millisecond), else
    ``X-RateLimit-Reset-After``, else the standard headers."""
    if isinstance(body, dict) and isinstance(body.get("retry_after"), int | float):
        return max(0.0, float(body["retry_after"]))
    reset_after = next(
        (v for k, v in headers.items() if k.lower() == "x-ratelimit-reset-after"), None
    )
    try:
        return max(0.0, float(reset_after)) if reset_after else retry_after(headers)
    except ValueError:
        return retry_after(headers)


class DiscordClient:
    platform: ClassVar[str] = "discord"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(self.platform, account.base_url, timeout=timeout, secrets=self._secrets)

    def publish(self, post: Post) -> Published:
        content = post.text if post.card.url in post.text else f"{post.text}\n{post.card.url}"
        response = self.api.send(
            "POST",
            self._webhook_path(),
            posts=True,
            params={"wait": "true"},
            json={"content": content, "allowed_mentions": {"parse": []}},
        )
        body = json_body(response)
        if not response.ok:
            raise self._error(response, body)
        if not isinstance(body, dict) or not body.get("id"):
            # A 2xx means the message exists; without its id we cannot say which.
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no message id")
        log.info("discord: posted message %s for %s", body["id"], post.key)
        return Published(remote_id=str(body["id"]))

    def find_published(self, post: Post) -> Published | None:
        raise PlatformError(NO_READ_BACK, Outcome.UNCLEAR)

    def _webhook_path(self) -> str:
        return webhook_path(
            _webhook(self.account.credentials.get("webhook_url")),
            "discord: the account has no Discord webhook URL "
            "(https://discord.com/api/webhooks/…); connect it again",
        )

    def _secrets(self) -> list[object]:
        url = self.account.credentials.get("webhook_url")
        match = _webhook(url)
        # The whole URL, and its token, which is what a message would show (in the path).
        return [url, match["token"] if match else None]

    def _error(self, response: requests.Response, body: Any) -> PlatformError:
        status = response.status_code
        outcome = decide(status, posts=True)
        detail = _describe(body)
        if status in HINTS:
            detail = f"{detail or 'refused'}; {HINTS[status]}"
        error = self.api.error(response, outcome, detail)
        if outcome is Outcome.RETRY:
            error.retry_after = discord_retry_after(body, response.headers)
        return error


def _describe(body: Any) -> str | None:
    """Discord's message and code, and for a 50035 the first field error, e.g. "Invalid Form
    Body (50035): content: Must be 2000 or fewer in length."."""
    if not isinstance(body, dict) or not body.get("message"):
        return None
    text = str(body["message"])
    if body.get("code"):
        text += f" ({body['code']})"
    field = _first_field_error(body.get("errors"), [])
    return f"{text}: {field}" if field else text


def _first_field_error(errors: Any, path: list[str]) -> str | None:
    if not isinstance(errors, dict):
        return None
    for item in errors.get("_errors") or []:
        if isinstance(item, dict) and item.get("message"):
            return f"{'.'.join(path) or 'body'}: {item['message']}"
    for key, value in errors.items():
        if key != "_errors":
            found = _first_field_error(value, [*path, key])
            if found:
                return found
    return None
