"""A fake LinkedIn versioned Posts API (``/rest/posts``) for one organisation, as
https://learn.microsoft.com/linkedin/marketing/community-management/shares/posts-api describes
it.

Checked as LinkedIn checks: a bearer token, the ``LinkedIn-Version: YYYYMM`` and
``X-Restli-Protocol-Version: 2.0.0`` headers, the post schema (required fields, enum values,
no unknown fields, an article with a ``source`` and ``title`` and a thumbnail that is an image
URN), and commentary of at most 3,000 characters. Commentary is read as "little" text the way
LinkedIn reads it: an unescaped reserved character that starts no little element cuts the
post off there without any error, which is what the client's escaping must prevent. A create
answers 201 with an empty body and the post URN in ``x-restli-id``; errors are ``{"message",
"status", "serviceErrorCode", "code"}``.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any, Self

from tests.social_fakes.base import FakeServer, Reply, Request

COMMENTARY_LIMIT = 3000
ACTIVE_VERSIONS = {"202509", "202510", "202511", "202512", "202601", "202604", "202609"}
LITTLE_RESERVED = set("\\|{}@[]()<>#*_~")
_MENTION = re.compile(r"@\[([^\]\\]*)\]\((urn:li:(?:person|organization):[^)\\]+)\)")
_HASHTAG_TEMPLATE = re.compile(r"\{hashtag\|[#\uff03]\|([^}|\\]+)\}")
_ENUMS = {
    "visibility": {"PUBLIC", "CONNECTIONS", "LOGGED_IN", "CONTAINER"},
    "lifecycleState": {"PUBLISHED", "DRAFT", "PUBLISH_REQUESTED", "PUBLISH_FAILED"},
}
_POST_FIELDS = {
    "author",
    "commentary",
    "visibility",
    "distribution",
    "content",
    "lifecycleState",
    "isReshareDisabledByAuthor",
    "contentLandingPage",
    "contentCallToActionLabel",
    "adContext",
    "container",
}
_ARTICLE_FIELDS = {"source", "title", "description", "thumbnail", "thumbnailAltText"}


def linkedin_error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "status": status, **extra}


def read_little(commentary: str) -> tuple[str, bool]:
    """The text a reader sees for ``commentary``, and whether LinkedIn cut it short at an
    unescaped reserved character."""
    shown: list[str] = []
    i = 0
    while i < len(commentary):
        char = commentary[i]
        if char == "\\":
            if i + 1 == len(commentary):
                return "".join(shown), True
            shown.append(commentary[i + 1])
            i += 2
            continue
        if char == "#" and i + 1 < len(commentary) and commentary[i + 1].isalnum():
            end = i + 1
            while end < len(commentary) and commentary[end].isalnum():
                end += 1
            shown.append(commentary[i:end])
            i = end
            continue
        mention = _MENTION.match(commentary, i)
        if mention:
            shown.append(mention.group(1))
            i = mention.end()
            continue
        template = _HASHTAG_TEMPLATE.match(commentary, i)
        if template:
            shown.append("#" + template.group(1))
            i = template.end()
            continue
        if char in LITTLE_RESERVED:
            return "".join(shown), True
        shown.append(char)
        i += 1
    return "".join(shown), False


class LinkedInFake(FakeServer):
    def __init__(self, organization_id: str, token: str) -> None:
        super().__init__()
        self.author = f"urn:li:organization:{organization_id}"
        self.token = token
        self.token_state = "valid"  # or "revoked"
        # Posts as LinkedIn stored them, oldest first; ``shown`` is the text readers see.
        self.posts: list[dict[str, Any]] = []
        self._ids = itertools.count(7_300_000_000_000_000_001)
        self.route("POST", r"/rest/posts", self._create)
        self.route("GET", r"/rest/posts", self._find)

    def reset(self) -> Self:
        super().reset()
        with self.lock:
            self.posts.clear()
        self.token_state = "valid"
        return self

    def rate_limit(self, **failure: Any) -> None:
        """Answer the next call as LinkedIn's throttle does."""
        self.fail_next(
            status=429,
            body=linkedin_error(429, "Resource level throttle APPLICATION DAY limit reached"),
            **failure,
        )

    def _check(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Reply(
                401,
                linkedin_error(
                    401,
                    "Empty oauth2_access_token",
                    serviceErrorCode=65604,
                    code="EMPTY_ACCESS_TOKEN",
                ),
            )
        if token.strip() != self.token:
            raise Reply(
                401,
                linkedin_error(
                    401,
                    "Invalid access token",
                    serviceErrorCode=65600,
                    code="INVALID_ACCESS_TOKEN",
                ),
            )
        if self.token_state == "revoked":
            raise Reply(
                401,
                linkedin_error(
                    401,
                    "The token used in the request has been revoked by the user",
                    serviceErrorCode=65601,
                    code="REVOKED_ACCESS_TOKEN",
                ),
            )
        version = request.headers.get("linkedin-version")
        if not version:
            raise Reply(
                400,
                linkedin_error(
                    400,
                    "A version must be present. Please specify a version by adding the "
                    "LinkedIn-Version header.",
                    code="VERSION_MISSING",
                ),
            )
        if version not in ACTIVE_VERSIONS:
            raise Reply(
                426,
                linkedin_error(
                    426, f"Requested version {version} is not active", code="NONEXISTENT_VERSION"
                ),
            )
        # LinkedIn documents the header as required but not its exact refusal; this is the
        # shape of its other 400s.
        if request.headers.get("x-restli-protocol-version") != "2.0.0":
            raise Reply(
                400,
                linkedin_error(
                    400,
                    "Requests must use Rest.li protocol 2.0.0 (X-Restli-Protocol-Version)",
                    code="ILLEGAL_ARGUMENT",
                ),
            )

    def _create(self, request: Request) -> Reply:
        self._check(request)
        body = None
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            try:
                body = request.json()
            except Reply:
                body = None
        if not isinstance(body, dict):
            return Reply(
                400,
                linkedin_error(
                    400, "Request body could not be converted to data map", code="ILLEGAL_ARGUMENT"
                ),
            )
        errors = _schema_errors(body)
        if errors:
            return Reply(422, linkedin_error(422, "".join(errors)))
        if body["author"] != self.author:
            return Reply(
                403,
                linkedin_error(
                    403,
                    "Not enough permissions to access: partnerApiPostsExternal.CREATE.20260901",
                    serviceErrorCode=100,
                    code="ACCESS_DENIED",
                ),
            )
        shown, cut = read_little(body["commentary"])
        if len(shown) > COMMENTARY_LIMIT:
            return Reply(
                400,
                linkedin_error(
                    400,
                    "com.linkedin.content.common.exception.BadRequestResponseException: "
                    f"ShareCommentary text length ({len(shown)} characters) exceeded the "
                    f"maximum allowed ({COMMENTARY_LIMIT} characters)",
                ),
            )
        urn = f"urn:li:share:{next(self._ids)}"
        now = int(time.time() * 1000)
        with self.lock:
            self.posts.append(
                {
                    **body,
                    "id": urn,
                    "shown": shown,
                    "cut": cut,
                    "createdAt": now,
                    "publishedAt": now,
                    "lastModifiedAt": now,
                }
            )
        return Reply(201, None, {"x-restli-id": urn, "x-linkedin-id": urn.rsplit(":", 1)[1]})

    def _find(self, request: Request) -> Reply:
        self._check(request)
        query = {k: v[-1] for k, v in request.query.items()}
        if query.get("q") != "author" or not query.get("author"):
            return Reply(400, linkedin_error(400, "Invalid query parameters passed to request"))
        if query["author"] != self.author:
            return Reply(
                403,
                linkedin_error(
                    403,
                    "Not enough permissions to access: partnerApiPostsExternal.FINDER-author",
                    serviceErrorCode=100,
                    code="ACCESS_DENIED",
                ),
            )
        start, count = int(query.get("start", "0")), min(int(query.get("count", "10")), 100)
        with self.lock:
            newest = list(reversed(self.posts))
        elements = [
            {k: v for k, v in post.items() if k not in ("shown", "cut")}
            for post in newest[start : start + count]
        ]
        return Reply(
            200,
            {
                "paging": {"start": start, "count": count, "links": [], "total": len(newest)},
                "elements": elements,
            },
        )


def _schema_errors(body: dict[str, Any]) -> list[str]:
    """LinkedIn's 422 message: one ``ERROR :: /path :: reason`` line per problem."""
    errors = [
        f"ERROR :: /{name} :: unrecognized field found but not allowed\n"
        for name in body
        if name not in _POST_FIELDS
    ]
    for name in ("author", "commentary", "visibility", "distribution", "lifecycleState"):
        if name not in body:
            errors.append(
                f"ERROR :: /{name} :: field is required but not found and has no default value\n"
            )
    for name, allowed in _ENUMS.items():
        if name in body and body[name] not in allowed:
            errors.append(f'ERROR :: /{name} :: "{body[name]}" is not an enum symbol\n')
    if "commentary" in body and not isinstance(body["commentary"], str):
        errors.append("ERROR :: /commentary :: not a string\n")
    distribution = body.get("distribution")
    if isinstance(distribution, dict):
        if distribution.get("feedDistribution") not in ("MAIN_FEED", "NONE"):
            errors.append(
                "ERROR :: /distribution/feedDistribution :: field is required but not found "
                "and has no default value\n"
            )
    elif "distribution" in body:
        errors.append("ERROR :: /distribution :: not a record\n")
    content = body.get("content")
    if content is not None:
        article = content.get("article") if isinstance(content, dict) else None
        if not isinstance(article, dict):
            errors.append("ERROR :: /content :: not a valid content union member\n")
        else:
            errors.extend(
                f"ERROR :: /content/article/{name} :: unrecognized field found but not allowed\n"
                for name in article
                if name not in _ARTICLE_FIELDS
            )
            for name in ("source", "title"):
                if not isinstance(article.get(name), str) or not article.get(name):
                    errors.append(
                        f"ERROR :: /content/article/{name} :: field is required but not found "
                        "and has no default value\n"
                    )
            thumbnail = article.get("thumbnail")
            if thumbnail is not None and not str(thumbnail).startswith("urn:li:image:"):
                errors.append(
                    "ERROR :: /content/article/thumbnail :: Invalid urn type. Expected "
                    "urn:li:image\n"
                )
    return errors
