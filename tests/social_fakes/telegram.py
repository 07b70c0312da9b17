"""A fake Telegram Bot API: ``sendMessage`` to channels, as https://core.telegram.org/bots/api
describes it.

Checked as the real API checks: the bot token in the path (an unknown token answers 401
``Unauthorized``, a malformed one 404 ``Not Found``), ``chat_id`` naming a channel the bot may
post in, ``text`` of 1 to 4,096 characters, and a ``link_preview_options`` object of the
documented fields and types. Every answer is the Bot API envelope: ``{"ok": true, "result":
…}`` or ``{"ok": false, "error_code": …, "description": …, "parameters": {…}}``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Self

from tests.social_fakes.base import FakeServer, Reply, Request

TEXT_LIMIT = 4096
_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]{20,}")
_PREVIEW_FIELDS = {
    "is_disabled": bool,
    "url": str,
    "prefer_small_media": bool,
    "prefer_large_media": bool,
    "show_above_text": bool,
}


def telegram_error(status: int, description: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return body


@dataclass(frozen=True)
class Channel:
    id: int
    username: str | None
    title: str
    # False for a channel the bot was never made an administrator of.
    bot_is_admin: bool = True


class TelegramFake(FakeServer):
    def __init__(self, token: str, channels: list[Channel]) -> None:
        super().__init__()
        self.token = token
        self.channels = channels
        # Every message the bot posted: the chat, the text and the preview options as sent.
        self.posts: list[dict[str, Any]] = []
        self.route("POST", r"/bot(?P<token>[^/]+)/(?P<method>\w+)", self._method)

    def reset(self) -> Self:
        super().reset()
        with self.lock:
            self.posts.clear()
        return self

    def flood(self, retry_after: int, **failure: Any) -> None:
        """Answer the next call as Telegram's flood control does."""
        self.fail_next(
            status=429,
            body=telegram_error(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            ),
            **failure,
        )

    def _method(self, request: Request) -> Reply:
        token = request.params["token"]
        if not _TOKEN.fullmatch(token):
            return Reply(404, telegram_error(404, "Not Found"))
        if token != self.token:
            return Reply(401, telegram_error(401, "Unauthorized"))
        if request.params["method"] != "sendMessage":
            return Reply(404, telegram_error(404, "Not Found: method not found"))
        return self._send_message(self._params(request))

    def _params(self, request: Request) -> dict[str, Any]:
        # The Bot API takes JSON, a form or a query string; a form carries objects as JSON text.
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind == "application/json":
            params = request.json()
            if not isinstance(params, dict):
                raise Reply(400, telegram_error(400, "Bad Request: invalid JSON object"))
            return params
        params = {k: v[-1] for k, v in request.query.items()}
        if kind == "application/x-www-form-urlencoded":
            params.update(request.form())
        if isinstance(params.get("link_preview_options"), str):
            try:
                params["link_preview_options"] = json.loads(params["link_preview_options"])
            except ValueError:
                raise Reply(
                    400, telegram_error(400, "Bad Request: can't parse link preview options")
                ) from None
        return params

    def _channel(self, chat_id: Any) -> Channel | None:
        for channel in self.channels:
            if channel.username and str(chat_id).lower() == "@" + channel.username.lower():
                return channel
            if str(chat_id) == str(channel.id):
                return channel
        return None

    def _send_message(self, params: dict[str, Any]) -> Reply:
        if params.get("chat_id") in (None, ""):
            return Reply(400, telegram_error(400, "Bad Request: chat_id is empty"))
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return Reply(400, telegram_error(400, "Bad Request: message text is empty"))
        if len(text) > TEXT_LIMIT:
            return Reply(400, telegram_error(400, "Bad Request: message is too long"))
        preview = params.get("link_preview_options", {})
        if not isinstance(preview, dict) or any(
            name not in _PREVIEW_FIELDS or not isinstance(value, _PREVIEW_FIELDS[name])
            for name, value in preview.items()
        ):
            return Reply(400, telegram_error(400, "Bad Request: can't parse link preview options"))
        channel = self._channel(params["chat_id"])
        if channel is None:
            return Reply(400, telegram_error(400, "Bad Request: chat not found"))
        if not channel.bot_is_admin:
            return Reply(
                403, telegram_error(403, "Forbidden: bot is not a member of the channel chat")
            )
        with self.lock:
            message_id = len([p for p in self.posts if p["chat_id"] == channel.id]) + 1
            self.posts.append(
                {
                    "chat_id": channel.id,
                    "message_id": message_id,
                    "text": text,
                    "link_preview_options": preview,
                }
            )
        chat: dict[str, Any] = {"id": channel.id, "title": channel.title, "type": "channel"}
        if channel.username:
            chat["username"] = channel.username
        message = {
            "message_id": message_id,
            "sender_chat": chat,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if preview:
            message["link_preview_options"] = preview
        return Reply(200, {"ok": True, "result": message})
