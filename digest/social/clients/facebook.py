"""Facebook Page: one Page post per story, through the Graph API's ``/{page-id}/feed``.

The post is the text as ``message`` and the story as ``link``; Facebook draws the link card
from the story page's OpenGraph tags. The page access token travels in the Authorization
header, never in the query string where access logs and exception texts would keep it.

There is no idempotency key. ``find_published`` reads the Page's recent posts
(``/published_posts``: the Page's own, not visitors') and looks for one with the story's link
and the post's text. The text matters as much as the link: two variants of one story on one
Page share the link, and must not be taken for each other. (The ``link`` field of a post is
deprecated since v3.3; the shared link is read from ``attachments{unshimmed_url}``, since
``url`` is Facebook's l.facebook.com redirect.)

Credentials: ``page_id`` and ``access_token`` (a Page access token with
``pages_manage_posts`` and ``pages_read_engagement``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, retry_after, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

GRAPH_VERSION = "v21.0"

# Graph answers {"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}, mostly
# with HTTP 400 whatever the cause, so the code decides before the status.
CODE_OUTCOMES: dict[int, Outcome] = {
    190: Outcome.REAUTH,  # access token invalid, expired or revoked (see SUBCODE_HINTS)
    102: Outcome.REAUTH,  # API session invalid
    10: Outcome.REAUTH,  # a permission was not granted or was removed: connect again
    4: Outcome.RETRY,  # application request limit reached
    17: Outcome.RETRY,  # user request limit reached
    32: Outcome.RETRY,  # Page request limit reached
    613: Outcome.RETRY,  # calls within the rate-limit window exceeded
    80001: Outcome.RETRY,  # Page Business Use Case rate limit
    368: Outcome.RETRY,  # temporarily blocked for policy reasons: "wait and retry"
    1: Outcome.UNCLEAR,  # unknown error: server trouble, like a 5xx
    2: Outcome.UNCLEAR,  # service temporarily unavailable
    100: Outcome.GIVE_UP,  # invalid parameter (message too long, bad link)
    506: Outcome.GIVE_UP,  # duplicate post
    1609005: Outcome.GIVE_UP,  # the link could not be fetched
}
# Codes 200 to 299 are permission errors, each naming a permission: as for code 10.
PERMISSION_CODES = range(200, 300)
# Why a token stopped working, for the editor who has to reconnect.
SUBCODE_HINTS: dict[int, str] = {
    458: "the app was removed from the account",
    459: "the user must log in at facebook.com to clear a checkpoint",
    460: "the password was changed",
    463: "the token expired",
    464: "the user must confirm their account at facebook.com",
    467: "the token was invalidated (logged out)",
    492: "the user is no longer an admin of the Page",
}
STATUS_OUTCOMES: dict[int, Outcome] = {401: Outcome.REAUTH, 429: Outcome.RETRY}

# How far back find_published looks: one page of Graph's largest size.
RECENT = 100
READ_FIELDS = "id,message,permalink_url,attachments{unshimmed_url,url}"


def decide(status: int, code: int | None, *, posts: bool) -> Outcome:
    outcome = CODE_OUTCOMES.get(code) if code is not None else None
    if outcome is None and code in PERMISSION_CODES:
        outcome = Outcome.REAUTH
    if outcome is None:
        return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)
    # A read that hit server trouble made nothing: it is simply repeated.
    return Outcome.RETRY if outcome is Outcome.UNCLEAR and not posts else outcome


def graph_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds until a throttled Page or app may call again. Graph says it only in the Business
    Use Case headers (``estimated_time_to_regain_access``, in minutes); X-App-Usage gives
    percentages and no time, so without a BUC estimate the standard headers are all there is."""
    minutes = [entry.get("estimated_time_to_regain_access") for entry in _business_usage(headers)]
    waits = [float(m) * 60 for m in minutes if isinstance(m, int | float) and m > 0]
    return max(waits) if waits else retry_after(headers)


def usage_note(headers: Mapping[str, str]) -> str | None:
    """The worst usage percentage Graph reported, e.g. "app usage call_count 100%"."""
    worst: tuple[float, str] | None = None
    usages = [("app usage", _usage(headers, "x-app-usage"))]
    usages += [("page usage", entry) for entry in _business_usage(headers)]
    for label, usage in usages:
        for metric in ("call_count", "total_cputime", "total_time"):
            value = usage.get(metric)
            if isinstance(value, int | float) and (worst is None or value > worst[0]):
                worst = (float(value), f"{label} {metric} {value:g}%")
    return worst[1] if worst else None


def _business_usage(headers: Mapping[str, str]) -> list[dict[str, Any]]:
    """X-Business-Use-Case-Usage: ``{"<page or business id>": [{"type", "call_count", …,
    "estimated_time_to_regain_access"}]}``, flattened to its entries."""
    return [
        entry
        for entries in _usage(headers, "x-business-use-case-usage").values()
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]


def _usage(headers: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = next((v for k, v in headers.items() if k.lower() == name), None)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class FacebookClient:
    platform: ClassVar[str] = "facebook"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: account.credentials.values(),
        )

    def publish(self, post: Post) -> Published:
        page_id = credential(self.account.credentials, "page_id", self.platform)
        response = self._call(
            "POST",
            f"/{GRAPH_VERSION}/{page_id}/feed",
            posts=True,
            data={"message": post.text, "link": post.card.url},
        )
        body = json_body(response)
        if not isinstance(body, dict) or not body.get("id"):
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no post id")
        log.info("facebook: posted %s for %s", body["id"], post.key)
        # The answer has no permalink; find_published reads one when it is needed.
        return Published(remote_id=str(body["id"]))

    def find_published(self, post: Post) -> Published | None:
        page_id = credential(self.account.credentials, "page_id", self.platform)
        body = json_body(
            self._call(
                "GET",
                f"/{GRAPH_VERSION}/{page_id}/published_posts",
                params={"fields": READ_FIELDS, "limit": str(RECENT)},
            )
        )
        posts = body.get("data") if isinstance(body, dict) else None
        if not isinstance(posts, list):
            raise PlatformError("facebook: published_posts carried no data", Outcome.RETRY)
        for candidate in posts:
            if (
                isinstance(candidate, dict)
                and candidate.get("id")
                and post.card.url in _links(candidate)
                and _same_text(candidate.get("message"), post.text)
            ):
                return Published(remote_id=str(candidate["id"]), url=candidate.get("permalink_url"))
        return None

    def _call(
        self, method: str, path: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        token = credential(self.account.credentials, "access_token", self.platform)
        response = self.api.send(
            method, path, posts=posts, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        if response.ok:
            return response
        body = json_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        outcome = decide(response.status_code, code, posts=posts)
        # Usage percentages explain a throttle; on any other error they are noise.
        usage = response.headers if outcome is Outcome.RETRY else {}
        failure = self.api.error(response, outcome, _detail(error, code, usage))
        if outcome is Outcome.RETRY:
            failure.retry_after = graph_retry_after(response.headers)
        raise failure


def _detail(error: dict[str, Any], code: int | None, headers: Mapping[str, str]) -> str | None:
    """Graph's message with its code, the reason behind a dead token, and the usage that got
    the call throttled."""
    parts = [str(error.get("message") or "")]
    if code is not None:
        subcode = error.get("error_subcode")
        codes = f"code {code}" + (f", subcode {subcode}" if isinstance(subcode, int) else "")
        if isinstance(subcode, int) and subcode in SUBCODE_HINTS:
            codes += f": {SUBCODE_HINTS[subcode]}"
        parts.append(f"({codes})")
    note = usage_note(headers)
    if note:
        parts.append(f"[{note}]")
    text = " ".join(part for part in parts if part)
    return text or None


def _links(post: dict[str, Any]) -> set[str]:
    attachments = post.get("attachments")
    data = attachments.get("data") if isinstance(attachments, dict) else None
    links = set()
    for attachment in data if isinstance(data, list) else []:
        if isinstance(attachment, dict):
            links.update(
                str(attachment[name]) for name in ("unshimmed_url", "url") if attachment.get(name)
            )
    return links


def _same_text(stored: object, sent: str) -> bool:
    # Facebook may trim or fold whitespace; nothing else about the text changes.
    return " ".join(str(stored or "").split()) == " ".join(sent.split())
