"""A fake Graph API for one Facebook Page: publish to ``/{page-id}/feed`` and read
``/{page-id}/published_posts``, as https://developers.facebook.com/docs/graph-api/reference/page/feed
describes them.

Checked as Graph checks: a page access token (``access_token`` parameter or an
``Authorization: Bearer``/``OAuth`` header), ``message`` and/or ``link``, a message of at most
63,206 characters, a link that is an absolute http(s) URL, and on reads the ``fields`` list
(asking for the ``link`` field, deprecated on Page posts since v3.3, is an error). Errors are
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}``.
"""

from __future__ import annotations

import itertools
import json
import secrets
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, urlsplit

from tests.social_fakes.base import FakeServer, Reply, Request

MESSAGE_LIMIT = 63206
_VERSION = r"/v(?P<version>\d+\.\d+)"
# Fields a Page post has in this fake; ``link`` and its siblings were removed in v3.3.
_FIELDS = {"id", "message", "permalink_url", "created_time", "attachments"}
_DEPRECATED = {"link", "caption", "description", "name", "object_id", "source", "type"}


def graph_error(
    message: str, code: int, *, kind: str = "OAuthException", subcode: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = secrets.token_urlsafe(8)
    return {"error": error}


class FacebookFake(FakeServer):
    def __init__(self, page_id: str, token: str) -> None:
        super().__init__()
        self.page_id = page_id
        self.token = token
        # What the token no longer is: "expired" answers code 190 subcode 463.
        self.token_state = "valid"
        # Posts on the Page, oldest first, as Graph stored them.
        self.posts: list[dict[str, Any]] = []
        self._ids = itertools.count(1_000_000_001)
        self.route("POST", _VERSION + r"/(?P<page>[^/]+)/feed", self._publish)
        self.route("GET", _VERSION + r"/(?P<page>[^/]+)/(?:published_posts|feed)", self._read)

    def reset(self) -> Self:
        super().reset()
        with self.lock:
            self.posts.clear()
        self.token_state = "valid"
        return self

    def throttle(self, code: int = 32, minutes: int = 3, **failure: Any) -> None:
        """Answer the next call as a throttled Page: Graph's rate-limit error plus the Business
        Use Case usage header, which says how long until access comes back."""
        usage = {
            self.page_id: [
                {
                    "type": "pages",
                    "call_count": 100,
                    "total_cputime": 12,
                    "total_time": 15,
                    "estimated_time_to_regain_access": minutes,
                }
            ]
        }
        self.fail_next(
            status=400,
            body=graph_error("(#32) Page request limit reached", code),
            headers={"X-Business-Use-Case-Usage": json.dumps(usage)},
            **failure,
        )

    def _token(self, request: Request, params: dict[str, str]) -> None:
        token = params.get("access_token")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() in ("bearer", "oauth") and credentials:
            token = credentials.strip()
        if not token:
            raise Reply(
                400,
                graph_error(
                    "An active access token must be used to query information about the "
                    "current user.",
                    2500,
                ),
            )
        if token != self.token:
            raise Reply(
                400, graph_error("Invalid OAuth access token - Cannot parse access token", 190)
            )
        if self.token_state == "expired":
            raise Reply(
                400,
                graph_error(
                    "Error validating access token: Session has expired.", 190, subcode=463
                ),
            )

    def _page(self, request: Request) -> None:
        if request.params["page"] != self.page_id:
            raise Reply(
                403,
                graph_error(
                    "(#200) If posting to a page, requires both pages_read_engagement and "
                    "pages_manage_posts as an admin with sufficient administrative permission",
                    200,
                ),
            )

    def _publish(self, request: Request) -> Reply:
        params = {k: v[-1] for k, v in request.query.items()}
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind == "application/x-www-form-urlencoded":
            params.update(request.form())
        elif kind == "application/json":
            body = request.json()
            params.update({k: str(v) for k, v in (body or {}).items()})
        self._token(request, params)
        self._page(request)
        message, link = params.get("message", ""), params.get("link", "")
        if not message and not link:
            return Reply(400, graph_error("(#100) Missing message or attachment", 100))
        if len(message) > MESSAGE_LIMIT:
            return Reply(
                400,
                graph_error(
                    f"(#100) Param message must be at most {MESSAGE_LIMIT} characters long", 100
                ),
            )
        parts = urlsplit(link)
        if link and (parts.scheme not in ("http", "https") or not parts.netloc):
            return Reply(400, graph_error("(#100) Param link must be a valid URL", 100))
        post_id = f"{self.page_id}_{next(self._ids)}"
        with self.lock:
            self.posts.append(
                {
                    "id": post_id,
                    "message": message,
                    "link": link,
                    "created_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
                }
            )
        return Reply(200, {"id": post_id})

    def _read(self, request: Request) -> Reply:
        params = {k: v[-1] for k, v in request.query.items()}
        self._token(request, params)
        self._page(request)
        fields = _top_level_fields(params.get("fields", "id,message,created_time"))
        deprecated = fields & _DEPRECATED
        if deprecated:
            name = sorted(deprecated)[0]
            return Reply(
                400,
                graph_error(
                    f"(#12) {name} field is deprecated for versions v3.3 and higher",
                    12,
                    kind="GraphMethodException",
                ),
            )
        unknown = fields - _FIELDS
        if unknown:
            name = sorted(unknown)[0]
            return Reply(
                400,
                graph_error(
                    f"(#100) Tried accessing nonexisting field ({name}) on node type (Post)", 100
                ),
            )
        try:
            limit = min(int(params.get("limit", "25")), 100)
        except ValueError:
            return Reply(400, graph_error("(#100) Param limit must be a number", 100))
        with self.lock:
            newest = list(reversed(self.posts))[:limit]
        return Reply(200, {"data": [_render(post, fields) for post in newest]})


def _top_level_fields(fields: str) -> set[str]:
    """``id,attachments{url,unshimmed_url}`` → {"id", "attachments"}: the braces hold
    sub-fields."""
    names, depth, current = set(), 0, ""
    for char in fields + ",":
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            names.add(current.strip())
            current = ""
        elif depth == 0:
            current += char
    return {name for name in names if name}


def _render(post: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    page_id, _, story_id = post["id"].partition("_")
    full = {
        "id": post["id"],
        "message": post["message"],
        "created_time": post["created_time"],
        "permalink_url": f"https://www.facebook.com/{page_id}/posts/{story_id}",
    }
    if post["link"]:
        # Graph shows the shared link through its l.facebook.com redirector; the original is
        # only in ``unshimmed_url``.
        full["attachments"] = {
            "data": [
                {
                    "type": "share",
                    "url": "https://l.facebook.com/l.php?u=" + quote(post["link"], safe=""),
                    "unshimmed_url": post["link"],
                }
            ]
        }
    return {name: value for name, value in full.items() if name in fields or name == "id"}
