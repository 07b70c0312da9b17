"""A fake Slack incoming webhook, as https://api.slack.com/messaging/webhooks and the changelog
on webhook errors (2016-05-17) describe it.

Answers are text/plain, as Slack's are: ``ok`` on success, otherwise the error string with
its status: ``invalid_payload`` and ``no_text`` (400), ``invalid_token`` and
``action_prohibited`` (403), ``no_service``, ``no_team`` and ``channel_not_found`` (404),
``channel_is_archived`` (410), ``rate_limited`` (429, with ``Retry-After``) and
``rollup_error`` (500). Text over 40,000 characters is cut to 40,000 and still posted, as
Slack does since 2018.
"""

from __future__ import annotations

import json
from typing import Any, Self

from tests.social_fakes.base import FakeServer, Reply, Request

TEXT_LIMIT = 40000
PLAIN = {"Content-Type": "text/plain; charset=utf-8"}


def slack_error(status: int, error: str) -> Reply:
    return Reply(status, error.encode(), PLAIN)


class SlackFake(FakeServer):
    def __init__(self, team: str, bot: str, secret: str) -> None:
        super().__init__()
        self.team, self.bot, self.secret = team, bot, secret
        # None, or the error every post now gets: "channel_is_archived", "action_prohibited",
        # "channel_not_found", "no_service" (the webhook was removed).
        self.state: str | None = None
        # Every message posted: the JSON as sent, the text as shown, and whether it was cut.
        self.posts: list[dict[str, Any]] = []
        self.route(
            "POST", r"/services/(?P<team>[^/]+)/(?P<bot>[^/]+)/(?P<secret>[^/]+)", self._post
        )

    def reset(self) -> Self:
        super().reset()
        with self.lock:
            self.posts.clear()
        self.state = None
        return self

    @property
    def path(self) -> str:
        return f"/services/{self.team}/{self.bot}/{self.secret}"

    def rate_limit(self, retry_after: int, **failure: Any) -> None:
        self.fail_next(
            status=429,
            body=b"rate_limited",
            headers={**PLAIN, "Retry-After": str(retry_after)},
            **failure,
        )

    def _post(self, request: Request) -> Reply:
        if (request.params["team"], request.params["bot"]) != (self.team, self.bot):
            return slack_error(404, "no_service")
        if request.params["secret"] != self.secret:
            return slack_error(403, "invalid_token")
        if self.state == "no_service":
            return slack_error(404, "no_service")
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        try:
            if kind == "application/json":
                payload = json.loads(request.body)
            elif kind == "application/x-www-form-urlencoded":
                payload = json.loads(request.form().get("payload", ""))
            else:
                return slack_error(400, "invalid_payload")
        except ValueError:
            return slack_error(400, "invalid_payload")
        if not isinstance(payload, dict):
            return slack_error(400, "invalid_payload")
        text = payload.get("text")
        if text is not None and not isinstance(text, str):
            return slack_error(400, "invalid_payload")
        if (
            not (text or "").strip()
            and not payload.get("blocks")
            and not payload.get("attachments")
        ):
            return slack_error(400, "no_text")
        if self.state in ("channel_is_archived",):
            return slack_error(410, self.state)
        if self.state == "action_prohibited":
            return slack_error(403, self.state)
        if self.state == "channel_not_found":
            return slack_error(404, self.state)
        shown = (text or "")[:TEXT_LIMIT]
        with self.lock:
            self.posts.append(
                {"json": payload, "text": shown, "truncated": len(text or "") > TEXT_LIMIT}
            )
        return Reply(200, b"ok", PLAIN)
