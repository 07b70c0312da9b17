"""A Mastodon instance: statuses, the Idempotency-Key, the length rule, rate limits.

Follows https://docs.joinmastodon.org/methods/statuses/: the length rule is the server's
StatusLengthValidator (graphemes, every URL counting 23), as digest.social.text_rules counts
it; errors are {"error": "..."}; 429 carries X-RateLimit-Limit/Remaining/Reset (an ISO 8601
time).
"""

from __future__ import annotations

import html
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from digest.social.text_rules import measure
from tests.social_fakes.base import Failure, FakeServer, Reply, Request

URL = re.compile(r"https?://[^\s<>\"]+")
URL_LENGTH = 23
VISIBILITIES = {"public", "unlisted", "private", "direct"}


@dataclass
class Status:
    id: str
    text: str
    visibility: str
    created_at: str
    idempotency_key: str | None
    extra: dict[str, Any] = field(default_factory=dict)


class MastodonFake(FakeServer):
    def __init__(
        self,
        *,
        token: str = "mastodon-token",
        username: str = "newsroom",
        max_characters: int = 500,
    ) -> None:
        super().__init__()
        self.token = token
        self.username = username
        self.account_id = "109876543210"
        self.max_characters = max_characters
        self.statuses: list[Status] = []
        self._ids = itertools.count(110000000000000001)
        self.route("POST", r"/api/v1/statuses", self._create)
        self.route("GET", r"/api/v1/accounts/verify_credentials", self._verify)
        self.route("GET", r"/api/v1/accounts/(?P<id>[^/]+)/statuses", self._list)
        self.route("GET", r"/api/v2/instance", self._instance)

    # -- test helpers ---------------------------------------------------------------------------

    def rate_limit(self, seconds: int = 120, **kwargs: Any) -> None:
        """Answer the next request with Mastodon's 429."""
        reset = datetime.now(UTC) + timedelta(seconds=seconds)
        self.fail_next(
            Failure(
                status=429,
                body={"error": "Too many requests"},
                headers={
                    "X-RateLimit-Limit": "300",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": reset.isoformat(timespec="milliseconds").replace(
                        "+00:00", "Z"
                    ),
                },
                **kwargs,
            )
        )

    def post_requests(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/api/v1/statuses"]

    # -- routes ---------------------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise Reply(401, {"error": "The access token is invalid"})

    def _create(self, request: Request) -> Reply:
        self._auth(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/json":
            params = request.json()
            if not isinstance(params, dict):
                raise Reply(400, {"error": "Body must be a JSON object"})
        elif content_type == "application/x-www-form-urlencoded":
            params = request.form()
        else:
            raise Reply(415, {"error": f"Unsupported content type {content_type!r}"})
        text = params.get("status")
        if not isinstance(text, str) or not text.strip():
            raise Reply(422, {"error": "Validation failed: Text can't be blank"})
        visibility = params.get("visibility", "public")
        if visibility not in VISIBILITIES:
            raise Reply(422, {"error": f"Validation failed: Visibility {visibility} is invalid"})
        if not measure("mastodon", text, limit=self.max_characters).fits:
            raise Reply(
                422,
                {
                    "error": "Validation failed: Text character limit of "
                    f"{self.max_characters} exceeded"
                },
            )
        key = request.headers.get("idempotency-key")
        with self.lock:
            # Mastodon keeps the key (per user) for an hour and answers with the first status.
            for status in self.statuses:
                if key is not None and status.idempotency_key == key:
                    return Reply(200, self._entity(status))
            status = Status(
                id=str(next(self._ids)),
                text=text,
                visibility=visibility,
                created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                idempotency_key=key,
            )
            self.statuses.append(status)
        return Reply(200, self._entity(status))

    def _verify(self, request: Request) -> Reply:
        self._auth(request)
        return Reply(200, self._account())

    def _list(self, request: Request) -> Reply:
        self._auth(request)
        if request.params["id"] != self.account_id:
            raise Reply(404, {"error": "Record not found"})
        limit = min(int(request.query.get("limit", ["20"])[-1]), 40)
        with self.lock:
            newest_first = list(reversed(self.statuses))[:limit]
        return Reply(200, [self._entity(s) for s in newest_first])

    def _instance(self, request: Request) -> Reply:
        return Reply(
            200,
            {
                "domain": "127.0.0.1",
                "title": "Fake Mastodon",
                "version": "4.3.0",
                "configuration": {
                    "statuses": {
                        "max_characters": self.max_characters,
                        "max_media_attachments": 4,
                        "characters_reserved_per_url": URL_LENGTH,
                    }
                },
            },
        )

    # -- entities -------------------------------------------------------------------------------

    def _account(self) -> dict[str, Any]:
        return {
            "id": self.account_id,
            "username": self.username,
            "acct": self.username,
            "url": f"{self.url}/@{self.username}",
        }

    def _entity(self, status: Status) -> dict[str, Any]:
        url = f"{self.url}/@{self.username}/{status.id}"
        return {
            "id": status.id,
            "created_at": status.created_at,
            "uri": f"{self.url}/users/{self.username}/statuses/{status.id}",
            "url": url,
            "visibility": status.visibility,
            "content": render(status.text),
            "account": self._account(),
            "card": None,
        }


def render(text: str) -> str:
    """The HTML Mastodon stores: escaped text, links as anchors (so & in a URL reads &amp;)."""
    out, last = [], 0
    for match in URL.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        href = html.escape(match.group())
        out.append(f'<a href="{href}" rel="nofollow noopener" target="_blank">{href}</a>')
        last = match.end()
    out.append(html.escape(text[last:]))
    return "<p>" + "".join(out) + "</p>"
