"""LinkedIn organisation page: one article post per story, through the versioned Posts API.

``POST /rest/posts`` with the ``LinkedIn-Version`` and ``X-Restli-Protocol-Version: 2.0.0``
headers every versioned call needs. The story is the post's ``content.article`` (source, title,
description) built from our own story data. A thumbnail would have to be uploaded first
through the Images API and named by its ``urn:li:image`` URN, so the card goes without one. A
201 answer has an empty body; the post's URN is in the ``x-restli-id`` header.

Commentary is LinkedIn's "little" text format, in which ``\\ | { } @ [ ] ( ) < > # * _ ~`` are
reserved. An unescaped reserved character that starts no little element makes LinkedIn cut
the post off there, with a success answer, so ``little_text`` escapes every one of them
except the ``#`` of a hashtag, which is little's own hashtag element.

There is no idempotency key. ``find_published`` reads the organisation's recent posts
(``q=author``) and looks for one with the story as its article source and the same
commentary: two variants of one story share the source and must not be taken for each other.

Credentials: ``access_token`` (a member token with ``w_organization_social`` and
``r_organization_social``, the member an administrator or content admin of the page) and
``organization_id`` (the number, or the whole ``urn:li:organization:…``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

# LinkedIn keeps a version for about a year and then answers 426 NONEXISTENT_VERSION: moving
# this forward is routine upkeep.
LINKEDIN_VERSION = "202609"
RESTLI_PROTOCOL = "2.0.0"

# LinkedIn answers {"message", "status", "serviceErrorCode"?, "code"?}; the status decides.
STATUS_OUTCOMES: dict[int, Outcome] = {
    400: Outcome.GIVE_UP,  # bad request, e.g. commentary over 3,000 characters
    401: Outcome.REAUTH,  # token invalid (65600), revoked (65601) or expired (65602)
    403: Outcome.GIVE_UP,  # the member may not post for this organisation
    422: Outcome.GIVE_UP,  # schema error, or DUPLICATE_POST
    426: Outcome.GIVE_UP,  # LINKEDIN_VERSION is no longer served
    429: Outcome.RETRY,  # throttled (daily limits reset at midnight UTC)
}
HINTS: dict[int, str] = {
    401: "connect the LinkedIn account again",
    403: "the connected member must be an administrator or content admin of the page, and "
    "the app needs w_organization_social",
    426: f"LinkedIn no longer serves API version {LINKEDIN_VERSION}; the client needs updating",
}

# How far back find_published looks. A post older than this is not the one that just failed.
RECENT = 50

_RESERVED = re.compile(r"[\\|{}@\[\]()<>#*_~]")
# A hashtag: "#" then letters or digits, not glued to a preceding word ("page#top" is no tag).
_HASHTAG = re.compile(r"(?<!\w)#(?=[^\W_])")


def little_text(text: str) -> str:
    """``text`` as little commentary that shows exactly ``text``: every reserved character
    backslash-escaped, except the ``#`` that starts a hashtag (kept, so tags stay links)."""
    keep = {match.start() for match in _HASHTAG.finditer(text)}
    return _RESERVED.sub(lambda m: m[0] if m.start() in keep else "\\" + m[0], text)


def decide(status: int, *, posts: bool) -> Outcome:
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


class LinkedInClient:
    platform: ClassVar[str] = "linkedin"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: account.credentials.values(),
        )

    def publish(self, post: Post) -> Published:
        article = {"source": post.card.url, "title": post.card.title}
        if post.card.description:
            article["description"] = post.card.description
        response = self._call(
            "POST",
            "/rest/posts",
            posts=True,
            json={
                "author": self._author(),
                "commentary": little_text(post.text),
                "visibility": "PUBLIC",
                "distribution": {
                    "feedDistribution": "MAIN_FEED",
                    "targetEntities": [],
                    "thirdPartyDistributionChannels": [],
                },
                "content": {"article": article},
                "lifecycleState": "PUBLISHED",
                "isReshareDisabledByAuthor": False,
            },
        )
        urn = response.headers.get("x-restli-id")
        if not urn:
            # A 2xx means the post was made; without its URN we cannot say which.
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no x-restli-id")
        log.info("linkedin: posted %s for %s", urn, post.key)
        return Published(remote_id=urn, url=_post_url(urn))

    def find_published(self, post: Post) -> Published | None:
        body = json_body(
            self._call(
                "GET",
                "/rest/posts",
                # requests encodes the URN's colons, as Rest.li 2.0 wants.
                params={"author": self._author(), "q": "author", "count": str(RECENT)},
                headers={"X-RestLi-Method": "FINDER"},
            )
        )
        elements = body.get("elements") if isinstance(body, dict) else None
        if not isinstance(elements, list):
            raise PlatformError("linkedin: the posts finder carried no elements", Outcome.RETRY)
        commentary = little_text(post.text)
        for element in elements:
            if not isinstance(element, dict) or not element.get("id"):
                continue
            content = element.get("content") if isinstance(element.get("content"), dict) else {}
            article = content.get("article") if isinstance(content.get("article"), dict) else {}
            if article.get("source") == post.card.url and _same_text(
                element.get("commentary"), commentary
            ):
                return Published(remote_id=str(element["id"]), url=_post_url(str(element["id"])))
        return None

    def _author(self) -> str:
        organization = credential(self.account.credentials, "organization_id", self.platform)
        prefix = "urn:li:organization:"
        return organization if organization.startswith(prefix) else prefix + organization

    def _call(
        self, method: str, path: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        token = credential(self.account.credentials, "access_token", self.platform)
        headers = {
            **kwargs.pop("headers", {}),
            "Authorization": f"Bearer {token}",
            "LinkedIn-Version": LINKEDIN_VERSION,
            "X-Restli-Protocol-Version": RESTLI_PROTOCOL,
        }
        response = self.api.send(method, path, posts=posts, headers=headers, **kwargs)
        if response.ok:
            return response
        body = json_body(response)
        detail = str(body.get("message") or "") if isinstance(body, dict) else ""
        if isinstance(body, dict) and body.get("code"):
            detail = f"{detail} ({body['code']})"
        if response.status_code in HINTS:
            detail = f"{detail or 'refused'}; {HINTS[response.status_code]}"
        raise self.api.error(response, decide(response.status_code, posts=posts), detail or None)


def _post_url(urn: str) -> str:
    return f"https://www.linkedin.com/feed/update/{urn}/"


def _same_text(stored: object, sent: str) -> bool:
    return " ".join(str(stored or "").split()) == " ".join(sent.split())
