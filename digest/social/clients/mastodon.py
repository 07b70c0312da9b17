"""Mastodon: one status per post, made safe to repeat by the Idempotency-Key header.

Mastodon keeps an Idempotency-Key for an hour and answers a repeated POST with the status it
already made, so a retry after an unclear failure cannot post twice inside that hour.
``find_published`` covers the rest by searching the account's recent statuses for the link.
The link card needs nothing from us: the server fetches the story's OpenGraph tags itself.

Credentials: ``access_token`` (a user token with the ``write:statuses`` and ``read:accounts``
scopes).
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, secret_values, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

# Mastodon answers its errors as {"error": "...", "error_description"?: "..."}; the status is
# what decides. 422 is a validation failure (too long, blank), 410 a suspended account.
STATUS_OUTCOMES: dict[int, Outcome] = {
    401: Outcome.REAUTH,
    403: Outcome.GIVE_UP,
    404: Outcome.GIVE_UP,
    410: Outcome.GIVE_UP,
    422: Outcome.GIVE_UP,
    429: Outcome.RETRY,
}

VISIBILITY = "public"

# How far back find_published looks: the API's largest page. A post older than 40 statuses
# is not the one that just failed.
RECENT = 40

_HREF = re.compile(r"""href=["']([^"']+)["']""")


@dataclass(frozen=True)
class InstanceLimits:
    max_characters: int
    # Every URL counts as this many characters, whatever its length.
    characters_reserved_per_url: int


def idempotency_key(post: Post) -> str:
    # Derived, not random: every attempt at the same post must send the same key.
    return hashlib.sha256(f"newsroom-digest:{post.key}".encode()).hexdigest()


def decide(status: int, *, posts: bool) -> Outcome:
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


class MastodonClient:
    platform: ClassVar[str] = "mastodon"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: secret_values(account.credentials),
        )

    def publish(self, post: Post) -> Published:
        response = self._call(
            "POST",
            "/api/v1/statuses",
            posts=True,
            json={"status": post.text, "visibility": VISIBILITY},
            headers={"Idempotency-Key": idempotency_key(post)},
        )
        status = json_body(response)
        if not isinstance(status, dict) or not status.get("id"):
            # A 2xx means the status was stored; without its id we cannot say which.
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no status id")
        log.info("mastodon: posted status %s for %s", status["id"], post.key)
        return Published(remote_id=str(status["id"]), url=status.get("url"))

    def find_published(self, post: Post) -> Published | None:
        me = json_body(self._call("GET", "/api/v1/accounts/verify_credentials"))
        if not isinstance(me, dict) or "id" not in me:
            raise PlatformError("mastodon: verify_credentials carried no account id", Outcome.RETRY)
        statuses = json_body(
            self._call(
                "GET",
                f"/api/v1/accounts/{me['id']}/statuses",
                params={"limit": RECENT, "exclude_replies": "true", "exclude_reblogs": "true"},
            )
        )
        for status in statuses if isinstance(statuses, list) else []:
            if _links(status) & {post.card.url}:
                return Published(remote_id=str(status["id"]), url=status.get("url"))
        return None

    def instance_limits(self) -> InstanceLimits:
        """The instance's status length rules (500 characters and 23 per URL by default; many
        instances raise the limit)."""
        body = json_body(self._call("GET", "/api/v2/instance"))
        statuses = ((body or {}).get("configuration") or {}).get("statuses") or {}
        return InstanceLimits(
            max_characters=int(statuses.get("max_characters", 500)),
            characters_reserved_per_url=int(statuses.get("characters_reserved_per_url", 23)),
        )

    def _call(
        self, method: str, path: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        headers = {
            **kwargs.pop("headers", {}),
            "Authorization": "Bearer "
            + credential(self.account.credentials, "access_token", self.platform),
        }
        response = self.api.send(method, path, posts=posts, headers=headers, **kwargs)
        if response.ok:
            return response
        body = json_body(response)
        detail = None
        if isinstance(body, dict):
            detail = body.get("error_description") or body.get("error")
        raise self.api.error(response, decide(response.status_code, posts=posts), detail)


def _links(status: Any) -> set[str]:
    """The URLs a status links to: the hrefs in its HTML content (unescaped, since & is
    written &amp; there) and its preview card's URL."""
    if not isinstance(status, dict):
        return set()
    links = {html.unescape(href) for href in _HREF.findall(status.get("content") or "")}
    card = status.get("card")
    if isinstance(card, dict) and card.get("url"):
        links.add(card["url"])
    return links
