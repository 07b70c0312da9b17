"""Threads (Meta's Graph API for Threads): a post is made in two steps.

1. ``POST /v1.0/{user-id}/threads`` makes a media container (text, link attachment). Nothing
   is visible yet, and an unused container expires after a day, so this step is harmless to
   repeat.
2. ``POST /v1.0/{user-id}/threads_publish`` with the container's id makes the post. This is
   the only step whose failure can be unclear.

There is no idempotency key; ``find_published`` searches the account's recent posts for the
story's link. The token travels in the Authorization header, never in the query string where
access logs and exception texts would keep it.

Credentials: ``access_token`` (with ``threads_basic`` and ``threads_content_publish``),
optionally ``user_id`` (else ``me``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, secret_values, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

API_VERSION = "v1.0"

# Graph errors answer {"error": {"message", "type", "code", "error_subcode", "is_transient",
# "fbtrace_id"}}, mostly with HTTP 400 whatever the cause, so the code decides first.
CODE_OUTCOMES: dict[int, Outcome] = {
    190: Outcome.REAUTH,  # access token invalid, expired or revoked
    102: Outcome.REAUTH,  # session invalid
    4: Outcome.RETRY,  # application request limit reached
    17: Outcome.RETRY,  # user request limit reached
    32: Outcome.RETRY,  # page/account request limit reached
    613: Outcome.RETRY,  # calls within the rate limit window exceeded
    10: Outcome.GIVE_UP,  # permission not granted
    200: Outcome.GIVE_UP,  # permission error
    100: Outcome.GIVE_UP,  # invalid parameter (text too long, bad link)
    9007: Outcome.RETRY,  # the container is not ready to publish yet
}
# 1 (unknown error) and 2 (service temporarily unavailable) are server trouble: like a 5xx.
SERVER_CODES = frozenset({1, 2})
STATUS_OUTCOMES: dict[int, Outcome] = {401: Outcome.REAUTH, 429: Outcome.RETRY}

RECENT = 50


def decide(status: int, code: int | None, transient: bool, *, posts: bool) -> Outcome:
    if code in CODE_OUTCOMES:
        return CODE_OUTCOMES[code]
    if code in SERVER_CODES or transient:
        return Outcome.UNCLEAR if posts else Outcome.RETRY
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


class ThreadsClient:
    platform: ClassVar[str] = "threads"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: secret_values(account.credentials, "user_id"),
        )

    @property
    def _user(self) -> str:
        return str(self.account.credentials.get("user_id") or "me")

    def publish(self, post: Post) -> Published:
        container = self._id(
            self._call(
                "POST",
                f"/{self._user}/threads",
                data={"media_type": "TEXT", "text": post.text, "link_attachment": post.card.url},
            ),
            Outcome.RETRY,
        )
        media_id = self._id(
            self._call(
                "POST",
                f"/{self._user}/threads_publish",
                posts=True,
                data={"creation_id": container},
            ),
            Outcome.UNCLEAR,
        )
        log.info("threads: posted %s for %s", media_id, post.key)
        return Published(remote_id=media_id, url=self._permalink(media_id))

    def find_published(self, post: Post) -> Published | None:
        body = json_body(
            self._call(
                "GET",
                f"/{self._user}/threads",
                params={"fields": "id,text,permalink,link_attachment_url", "limit": RECENT},
            )
        )
        found = body.get("data") if isinstance(body, dict) else None
        for media in found or []:
            if not isinstance(media, dict):
                continue
            if media.get("link_attachment_url") == post.card.url or post.card.url in (
                media.get("text") or ""
            ):
                return Published(remote_id=str(media["id"]), url=media.get("permalink"))
        return None

    def _permalink(self, media_id: str) -> str | None:
        # The post is made; a failure to read its link must not turn success into an error.
        try:
            body = json_body(self._call("GET", f"/{media_id}", params={"fields": "permalink"}))
        except PlatformError as exc:
            log.info("threads: no permalink for %s (%s)", media_id, exc.message)
            return None
        return body.get("permalink") if isinstance(body, dict) else None

    def _id(self, response: requests.Response, outcome: Outcome) -> str:
        body = json_body(response)
        if not isinstance(body, dict) or not body.get("id"):
            raise self.api.error(response, outcome, "the answer carried no id")
        return str(body["id"])

    def _call(
        self, method: str, path: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        token = credential(self.account.credentials, "access_token", self.platform)
        response = self.api.send(
            method,
            f"/{API_VERSION}{path}",
            posts=posts,
            headers={"Authorization": f"Bearer {token}"},
            **kwargs,
        )
        if response.ok:
            return response
        body = json_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        outcome = decide(response.status_code, code, bool(error.get("is_transient")), posts=posts)
        detail = error.get("error_user_msg") or error.get("message")
        if detail and code is not None:
            detail = f"{detail} (code {code})"
        raise self.api.error(response, outcome, detail)
