"""X (API v2): ``POST /2/tweets`` signed with OAuth 1.0a user context.

The signature is computed here (RFC 5849 section 3.4, HMAC-SHA1, as X's "Creating a
signature" page describes) rather than with a library: it is short, and the JSON body of a v2
call is not part of it, which OAuth libraries written for form bodies get wrong.

X has no idempotency key, so a retry after an unclear failure must read back first:
``find_published`` searches the account's recent posts for the story's link. t.co rewrites
links in the text, so the match is on ``entities.urls[].expanded_url``.

Credentials: ``consumer_key``, ``consumer_secret``, ``access_token``, ``access_token_secret``;
optionally ``user_id`` (saves a ``GET /2/users/me`` on read-back).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from digest.social.http import Api, credential, json_body, secret_values, status_outcome
from digest.social.platform import Account, Outcome, PlatformError, Post, Published

log = logging.getLogger(__name__)

# X answers problem JSON ({"title", "detail", "type", "status"}, with "errors": [...] for
# invalid requests). 400 is an invalid request (text too long), 403 a refusal (suspended
# account, app without write access), 401 a revoked or wrong token.
STATUS_OUTCOMES: dict[int, Outcome] = {
    400: Outcome.GIVE_UP,
    401: Outcome.REAUTH,
    403: Outcome.GIVE_UP,
    429: Outcome.RETRY,
}

# X refuses a post whose text repeats a recent one with this 403. After an unclear attempt it
# most likely means that attempt landed: the caller reads back rather than giving up.
DUPLICATE = "duplicate content"

RECENT = 100  # the timeline endpoint's largest page


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding, as OAuth 1.0a requires: everything but unreserved
    characters, with upper-case hex."""
    return quote(value, safe="-._~")


def signature_base_string(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """METHOD & encoded base URL & encoded sorted parameters (query and oauth_* only: a JSON
    body is not signed)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    base_url = urlunsplit((scheme, netloc, parts.path or "/", "", ""))
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join(percent_encode(part) for part in (method.upper(), base_url, normalized))


def sign(base_string: str, consumer_secret: str, token_secret: str) -> str:
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def authorization_header(
    method: str,
    url: str,
    query: Mapping[str, str],
    credentials: Mapping[str, Any],
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
) -> str:
    """The ``Authorization: OAuth ...`` header for one request."""
    oauth = {
        "oauth_consumer_key": credential(credentials, "consumer_key", "x"),
        "oauth_nonce": nonce or secrets.token_hex(16),
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "oauth_token": credential(credentials, "access_token", "x"),
        "oauth_version": "1.0",
    }
    base = signature_base_string(method, url, [*query.items(), *oauth.items()])
    oauth["oauth_signature"] = sign(
        base,
        credential(credentials, "consumer_secret", "x"),
        credential(credentials, "access_token_secret", "x"),
    )
    return "OAuth " + ", ".join(f'{k}="{percent_encode(v)}"' for k, v in sorted(oauth.items()))


def decide(status: int, detail: str | None, *, posts: bool) -> Outcome:
    if posts and status == 403 and detail and DUPLICATE in detail.lower():
        return Outcome.UNCLEAR
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


def error_detail(body: Any) -> str | None:
    """The readable part of X's problem JSON: its title and detail, then each error message."""
    if not isinstance(body, dict):
        return None
    parts = [body.get("title"), body.get("detail")]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            parts.append(error.get("message") or error.get("detail"))
    text = ": ".join(str(p) for p in parts if p)
    return text or None


class XClient:
    platform: ClassVar[str] = "x"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: secret_values(account.credentials, "user_id"),
        )

    def publish(self, post: Post) -> Published:
        response = self._call("POST", "/2/tweets", posts=True, json={"text": post.text})
        body = json_body(response)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no post id")
        log.info("x: posted %s for %s", data["id"], post.key)
        return Published(remote_id=str(data["id"]), url=self._post_url(str(data["id"])))

    def find_published(self, post: Post) -> Published | None:
        user_id = self.account.credentials.get("user_id") or self._user_id()
        body = json_body(
            self._call(
                "GET",
                f"/2/users/{user_id}/tweets",
                query={
                    "max_results": str(RECENT),
                    "tweet.fields": "entities,created_at",
                    "exclude": "replies,retweets",
                },
            )
        )
        tweets = body.get("data") if isinstance(body, dict) else None
        for tweet in tweets or []:
            if _links_to(tweet, post.card.url):
                return Published(remote_id=str(tweet["id"]), url=self._post_url(str(tweet["id"])))
        return None

    def _user_id(self) -> str:
        body = json_body(self._call("GET", "/2/users/me"))
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise PlatformError("x: /2/users/me carried no user id", Outcome.RETRY)
        return str(data["id"])

    def _call(
        self,
        method: str,
        path: str,
        *,
        posts: bool = False,
        query: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> requests.Response:
        query = query or {}
        url = self.api.url(path)
        # The query string is built here, with the same encoding the signature uses, so what
        # is signed is byte for byte what is sent.
        if query:
            url += "?" + "&".join(
                f"{percent_encode(k)}={percent_encode(v)}" for k, v in query.items()
            )
        headers = {
            "Authorization": authorization_header(
                method, self.api.url(path), query, self.account.credentials
            )
        }
        response = self.api.send(method, url, posts=posts, headers=headers, json=json)
        if response.ok:
            return response
        detail = error_detail(json_body(response))
        raise self.api.error(response, decide(response.status_code, detail, posts=posts), detail)

    def _post_url(self, tweet_id: str) -> str:
        return f"https://x.com/{self.account.handle.lstrip('@')}/status/{tweet_id}"


def _links_to(tweet: Any, url: str) -> bool:
    if not isinstance(tweet, dict):
        return False
    entities = tweet.get("entities") or {}
    for link in entities.get("urls") or []:
        if isinstance(link, dict) and url in (link.get("expanded_url"), link.get("unwound_url")):
            return True
    return url in (tweet.get("text") or "")
