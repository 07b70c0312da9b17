"""A fake Discord "Execute Webhook" endpoint, as
https://discord.com/developers/docs/resources/webhook#execute-webhook describes it.

Checked as Discord checks: the webhook id and token in the path (unknown id: 404 ``Unknown
Webhook`` 10015; wrong token: 401 ``Invalid Webhook Token`` 50027), a JSON body, ``content``
of at most 2,000 characters or an embed, and ``allowed_mentions`` (``parse`` only of "roles",
"users", "everyone", and never ``parse: ["users"]`` together with a ``users`` list). Each
message records whom it would have pinged, by Discord's rule: with no ``allowed_mentions``
every mention in the content pings. ``?wait=true`` answers the message object, otherwise 204.
Errors are ``{"message", "code", "errors"?}``; a rate limit is ``{"message", "retry_after",
"global"}`` with the ``X-RateLimit-*`` headers.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from datetime import UTC, datetime
from typing import Any, Self

from tests.social_fakes.base import FakeServer, Reply, Request

CONTENT_LIMIT = 2000
_PARSE_TYPES = {"roles", "users", "everyone"}
_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")
_EVERYONE = re.compile(r"@(everyone|here)\b")


def form_error(path: list[str], code: str, message: str) -> dict[str, Any]:
    """Discord's 50035 "Invalid Form Body", with the error nested at ``path``."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {key: errors}
    return {"code": 50035, "errors": errors, "message": "Invalid Form Body"}


class DiscordFake(FakeServer):
    def __init__(self, webhook_id: str, token: str, channel_id: str = "1100000000000000001"):
        super().__init__()
        self.webhook_id = webhook_id
        self.token = token
        self.channel_id = channel_id
        # Every message made: its JSON as sent, and whom it pinged.
        self.posts: list[dict[str, Any]] = []
        self._ids = itertools.count(1_300_000_000_000_000_001)
        self.route("POST", r"/api(?:/v\d+)?/webhooks/(?P<id>\d+)/(?P<token>[^/]+)", self._execute)

    def reset(self) -> Self:
        super().reset()
        with self.lock:
            self.posts.clear()
        return self

    @property
    def path(self) -> str:
        return f"/api/webhooks/{self.webhook_id}/{self.token}"

    def rate_limit(self, retry_after: float, **failure: Any) -> None:
        """Answer the next call as Discord's per-webhook limit does."""
        self.fail_next(
            status=429,
            body={
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": False,
            },
            headers={
                "Retry-After": str(math.ceil(retry_after)),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": "a06de9a3d5e2f0c1b5e6f7a8b9c0d1e2",
                "X-RateLimit-Scope": "shared",
            },
            **failure,
        )

    def _execute(self, request: Request) -> Reply:
        if request.params["id"] != self.webhook_id:
            return Reply(404, {"message": "Unknown Webhook", "code": 10015})
        if request.params["token"] != self.token:
            return Reply(401, {"message": "Invalid Webhook Token", "code": 50027})
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006})
        try:
            body = request.json()
        except Reply:
            body = None
        if not isinstance(body, dict):
            return Reply(400, {"message": "The request body contains invalid JSON.", "code": 50109})
        content = body.get("content") or ""
        if not isinstance(content, str):
            return Reply(400, form_error(["content"], "BASE_TYPE_STRING", "Must be a string."))
        if len(content) > CONTENT_LIMIT:
            return Reply(
                400,
                form_error(
                    ["content"],
                    "BASE_TYPE_MAX_LENGTH",
                    f"Must be {CONTENT_LIMIT} or fewer in length.",
                ),
            )
        if not content.strip() and not body.get("embeds"):
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006})
        allowed = body.get("allowed_mentions")
        problem = _allowed_mentions_error(allowed)
        if problem is not None:
            return Reply(400, problem)
        pings = _pings(content, allowed)
        message_id = str(next(self._ids))
        with self.lock:
            self.posts.append({"id": message_id, "json": body, "pings": pings})
        if request.query.get("wait", ["false"])[-1].lower() != "true":
            return Reply(204)
        return Reply(
            200,
            {
                "id": message_id,
                "type": 0,
                "content": content,
                "channel_id": self.channel_id,
                "author": {
                    "id": self.webhook_id,
                    "username": "Newsroom",
                    "bot": True,
                    "discriminator": "0000",
                    "avatar": None,
                },
                "webhook_id": self.webhook_id,
                "timestamp": datetime.now(UTC).isoformat(),
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": pings["everyone"],
                "mentions": [{"id": user} for user in pings["users"]],
                "mention_roles": pings["roles"],
                "attachments": [],
                "embeds": body.get("embeds") or [],
                "flags": 0,
            },
        )


def _allowed_mentions_error(allowed: Any) -> dict[str, Any] | None:
    if allowed is None:
        return None
    if not isinstance(allowed, dict):
        return form_error(
            ["allowed_mentions"],
            "MODEL_TYPE_CONVERT",
            "Only dictionaries may be used in a ModelType",
        )
    parse = allowed.get("parse", [])
    if not isinstance(parse, list):
        return form_error(["allowed_mentions", "parse"], "BASE_TYPE_LIST", "Must be a list.")
    for n, value in enumerate(parse):
        if value not in _PARSE_TYPES:
            return form_error(
                ["allowed_mentions", "parse", str(n)],
                "BASE_TYPE_CHOICES",
                "Value must be one of {'roles', 'users', 'everyone'}.",
            )
    for kind in ("users", "roles"):
        ids = allowed.get(kind)
        if ids is None:
            continue
        if kind in parse:
            return form_error(
                ["allowed_mentions"],
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
            )
        if not isinstance(ids, list) or len(ids) > 100:
            return form_error(
                ["allowed_mentions", kind],
                "BASE_TYPE_MAX_LENGTH",
                "Must be 100 or fewer in length.",
            )
    return None


def _pings(content: str, allowed: dict[str, Any] | None) -> dict[str, Any]:
    users, roles = _USER.findall(content), _ROLE.findall(content)
    everyone = bool(_EVERYONE.search(content))
    if allowed is None:
        return {"everyone": everyone, "users": users, "roles": roles}
    parse = set(allowed.get("parse", []))
    return {
        "everyone": everyone and "everyone" in parse,
        "users": [u for u in users if "users" in parse or u in allowed.get("users", [])],
        "roles": [r for r in roles if "roles" in parse or r in allowed.get("roles", [])],
    }
