"""Telegram: one channel message per post, through the Bot API's ``sendMessage``.

The story card is Telegram's link preview, pinned to the story's URL with
``link_preview_options`` (large media, below the text) so the preview never falls on some
other link in the text.

The bot token is part of every URL (``/bot<token>/sendMessage``). Exception texts from
requests carry URLs, so none is ever shown; every message this module builds goes through
``Api``'s redaction against the account's credentials.

No read-back. The Bot API has no idempotency key, and a bot cannot read a channel's history
(updates never include the bot's own messages), so after an unclear failure nobody but a
person looking at the channel can tell whether the message landed. ``find_published`` says
exactly that by raising ``PlatformError(UNCLEAR)``: the queue must then mark the post
``unknown`` for an editor to check, and never post it again by itself. Returning None would
claim "not posted" and invite a duplicate.

Credentials: ``bot_token`` (from @BotFather) and ``chat_id`` (``@channelname`` or the
channel's ``-100…`` id). The bot must be an administrator of the channel allowed to post.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

# Telegram answers {"ok": false, "error_code", "description", "parameters"?}; error_code is the
# HTTP status, and the status decides.
STATUS_OUTCOMES: dict[int, Outcome] = {
    400: Outcome.GIVE_UP,  # "Bad Request: chat not found", "message is too long", …
    401: Outcome.REAUTH,  # "Unauthorized": the token was revoked or replaced
    403: Outcome.GIVE_UP,  # "Forbidden: bot is not a member of the channel chat"
    404: Outcome.REAUTH,  # "Not Found": the token is malformed, so the URL names no bot
    429: Outcome.RETRY,  # flood control; parameters.retry_after says how long
}
# What an editor has to do, added to the platform's own description.
HINTS: dict[int, str] = {
    401: "issue a new bot token with @BotFather and connect the account again",
    403: "make the bot an administrator of the channel, allowed to post messages",
    404: "the bot token is not a Telegram token; connect the account again",
}

# A bot token is "<bot id>:<secret>". Anything else (a pasted token with a space or newline)
# would be percent-encoded into the URL, where redaction could no longer recognise it.
_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]+")

NO_READ_BACK = (
    "telegram: a bot cannot read a channel's messages, so whether this post landed is "
    "unknown; check the channel before posting it again"
)


def decide(status: int, *, posts: bool) -> Outcome:
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


class TelegramClient:
    platform: ClassVar[str] = "telegram"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: account.credentials.values(),
        )

    def publish(self, post: Post) -> Published:
        token = credential(self.account.credentials, "bot_token", self.platform)
        if not _TOKEN.fullmatch(token):
            raise PlatformError(f"telegram: {HINTS[404]}", Outcome.REAUTH)
        chat_id = credential(self.account.credentials, "chat_id", self.platform)
        response = self.api.send(
            "POST",
            f"/bot{token}/sendMessage",
            posts=True,
            json={
                "chat_id": chat_id,
                "text": post.text,
                "link_preview_options": {
                    "url": post.card.url,
                    "prefer_large_media": True,
                    "show_above_text": False,
                },
            },
        )
        body = json_body(response)
        if not response.ok or not isinstance(body, dict) or body.get("ok") is not True:
            raise self._error(response, body)
        message = body.get("result")
        if not isinstance(message, dict) or "message_id" not in message:
            # A 2xx with ok=true means the message exists; without its id we cannot say which.
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no message id")
        chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
        log.info("telegram: posted message %s for %s", message["message_id"], post.key)
        return Published(
            # Message ids count per chat, so the chat is part of the id.
            remote_id=f"{chat.get('id', chat_id)}/{message['message_id']}",
            url=_message_url(chat, message["message_id"]),
        )

    def find_published(self, post: Post) -> Published | None:
        raise PlatformError(NO_READ_BACK, Outcome.UNCLEAR)

    def _error(self, response: requests.Response, body: Any) -> PlatformError:
        status = response.status_code
        if isinstance(body, dict) and isinstance(body.get("error_code"), int):
            status = body["error_code"]
        detail = body.get("description") if isinstance(body, dict) else None
        if 200 <= status < 300:
            # A 2xx that is no Bot API answer (a proxy's page): the message may well exist.
            return self.api.error(response, Outcome.UNCLEAR, "the answer was not the Bot API's")
        outcome = decide(status, posts=True)
        if status in HINTS:
            detail = f"{detail or 'refused'} ({HINTS[status]})"
        error = self.api.error(response, outcome, detail)
        parameters = body.get("parameters") if isinstance(body, dict) else None
        if outcome is Outcome.RETRY and isinstance(parameters, dict):
            wait = parameters.get("retry_after")
            if isinstance(wait, int | float) and wait >= 0:
                error.retry_after = float(wait)
        return error


def _message_url(chat: dict[str, Any], message_id: object) -> str | None:
    """The message's t.me link: by username for a public channel; by the id without its
    ``-100`` prefix for a private one, a link only the channel's members can open."""
    if chat.get("username"):
        return f"https://t.me/{chat['username']}/{message_id}"
    chat_id = str(chat.get("id", ""))
    if chat_id.startswith("-100"):
        return f"https://t.me/c/{chat_id[4:]}/{message_id}"
    return None
