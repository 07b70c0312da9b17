"""X API v2: ``POST /2/tweets``, ``GET /2/users/me``, ``GET /2/users/:id/tweets``, behind
OAuth 1.0a user context that is verified here by recomputing the signature.

Follows X's "Authorizing a request" and "Creating a signature" pages (the JSON body is not
signed), twitter-text's weighted length (280; as digest.social.text_rules counts it), and v2's
problem JSON for errors. Links in stored text are rewritten to t.co, as X does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from digest.social.text_rules import measure
from tests.social_fakes.base import Failure, FakeServer, Reply, Request

URL = re.compile(r"https?://[^\s<>\"]+")
TIMESTAMP_SKEW = 300

UNAUTHORIZED = {
    "title": "Unauthorized",
    "type": "about:blank",
    "status": 401,
    "detail": "Unauthorized",
}


def _enc(value: str) -> str:
    return quote(value, safe="-._~")


def _invalid(message: str, parameters: dict[str, list[str]] | None = None) -> Reply:
    error: dict[str, Any] = {"message": message}
    if parameters:
        error["parameters"] = parameters
    return Reply(
        400,
        {
            "errors": [error],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request",
        },
    )


@dataclass
class Tweet:
    id: str
    text: str  # as X stores it: links rewritten to t.co
    submitted: str  # as the client sent it
    urls: list[dict[str, Any]] = field(default_factory=list)


class XFake(FakeServer):
    def __init__(
        self,
        *,
        consumer_key: str = "x-consumer-key",
        consumer_secret: str = "x-consumer-secret",
        access_token: str = "1234567890-x-access-token",
        access_token_secret: str = "x-access-token-secret",
        username: str = "newsroom",
    ) -> None:
        super().__init__()
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.access_token = access_token
        self.access_token_secret = access_token_secret
        self.username = username
        self.user_id = "1234567890"
        self.tweets: list[Tweet] = []
        self.nonces: set[str] = set()
        self.signature_failures = 0
        self._ids = itertools.count(1800000000000000001)
        self.route("POST", r"/2/tweets", self._create)
        self.route("GET", r"/2/users/me", self._me)
        self.route("GET", r"/2/users/(?P<id>\d+)/tweets", self._timeline)

    def rate_limit(self, seconds: int = 900, **kwargs: Any) -> None:
        self.fail_next(
            Failure(
                status=429,
                body={
                    "title": "Too Many Requests",
                    "detail": "Too Many Requests",
                    "type": "about:blank",
                    "status": 429,
                },
                headers={
                    "x-rate-limit-limit": "100",
                    "x-rate-limit-remaining": "0",
                    "x-rate-limit-reset": str(int(time.time()) + seconds),
                },
                **kwargs,
            )
        )

    # -- OAuth 1.0a -----------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("OAuth "):
            self._refuse()
        oauth: dict[str, str] = {}
        for part in header.removeprefix("OAuth ").split(","):
            name, _, value = part.strip().partition("=")
            if not (value.startswith('"') and value.endswith('"')):
                self._refuse()
            oauth[unquote(name)] = unquote(value[1:-1])
        signature = oauth.pop("oauth_signature", "")
        required = {"oauth_consumer_key", "oauth_nonce", "oauth_signature_method"}
        required |= {"oauth_timestamp", "oauth_token"}
        if not required <= oauth.keys() or oauth["oauth_signature_method"] != "HMAC-SHA1":
            self._refuse()
        if oauth.get("oauth_version", "1.0") != "1.0":
            self._refuse()
        if (oauth["oauth_consumer_key"], oauth["oauth_token"]) != (
            self.consumer_key,
            self.access_token,
        ):
            self._refuse()
        stamp = oauth["oauth_timestamp"]
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > TIMESTAMP_SKEW:
            self._refuse()
        params = [(k, v) for k, values in request.query.items() for v in values]
        params += list(oauth.items())
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in params))
        base_url = f"http://{request.headers['host'].lower()}{request.path}"
        base = "&".join(_enc(p) for p in (request.method, base_url, normalized))
        key = f"{_enc(self.consumer_secret)}&{_enc(self.access_token_secret)}"
        expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest())
        if not hmac.compare_digest(expected.decode(), signature):
            self._refuse()
        with self.lock:
            if oauth["oauth_nonce"] in self.nonces:
                self._refuse()
            self.nonces.add(oauth["oauth_nonce"])

    def _refuse(self) -> None:
        with self.lock:
            self.signature_failures += 1
        raise Reply(401, UNAUTHORIZED)

    # -- routes ---------------------------------------------------------------------------------

    def _create(self, request: Request) -> Reply:
        self._authorize(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise Reply(
                415,
                {
                    "title": "Unsupported Media Type",
                    "detail": "Content-Type must be application/json",
                    "type": "about:blank",
                    "status": 415,
                },
            )
        body = request.json()
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise _invalid("$.text: is missing but it is required", {"text": []})
        if not measure("x", text).fits:
            raise _invalid(
                "Your Tweet text is too long. For more information on how Twitter determines "
                "text length see https://github.com/twitter/twitter-text.",
                {"text": [text]},
            )
        with self.lock:
            if any(t.submitted == text for t in self.tweets):
                raise Reply(
                    403,
                    {
                        "detail": "You are not allowed to create a Tweet with duplicate content.",
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                    },
                )
            tweet = self._store(text)
        return Reply(
            201,
            {"data": {"id": tweet.id, "text": tweet.text, "edit_history_tweet_ids": [tweet.id]}},
        )

    def _me(self, request: Request) -> Reply:
        self._authorize(request)
        return Reply(
            200, {"data": {"id": self.user_id, "name": "Newsroom", "username": self.username}}
        )

    def _timeline(self, request: Request) -> Reply:
        self._authorize(request)
        if request.params["id"] != self.user_id:
            raise Reply(
                404,
                {
                    "title": "Not Found Error",
                    "detail": "Could not find user",
                    "type": "about:blank",
                },
            )
        raw = request.query.get("max_results", ["10"])[-1]
        if not raw.isdigit() or not 5 <= int(raw) <= 100:
            raise _invalid(
                f"The `max_results` query parameter value [{raw}] is not between 5 and 100",
                {"max_results": [raw]},
            )
        fields = set(",".join(request.query.get("tweet.fields", [])).split(","))
        with self.lock:
            tweets = list(reversed(self.tweets))[: int(raw)]
        if not tweets:
            return Reply(200, {"meta": {"result_count": 0}})
        data = []
        for tweet in tweets:
            item: dict[str, Any] = {
                "id": tweet.id,
                "text": tweet.text,
                "edit_history_tweet_ids": [tweet.id],
            }
            if "entities" in fields and tweet.urls:
                item["entities"] = {"urls": tweet.urls}
            data.append(item)
        meta = {"result_count": len(data), "newest_id": data[0]["id"], "oldest_id": data[-1]["id"]}
        return Reply(200, {"data": data, "meta": meta})

    def _store(self, text: str) -> Tweet:
        tweet_id = str(next(self._ids))
        stored, urls, last = "", [], 0
        for match in URL.finditer(text):
            stored += text[last : match.start()]
            short = "https://t.co/" + secrets.token_urlsafe(8)[:10]
            start = len(stored)
            stored += short
            urls.append(
                {
                    "start": start,
                    "end": len(stored),
                    "url": short,
                    "expanded_url": match.group(),
                    "display_url": match.group().split("://", 1)[1][:26],
                }
            )
            last = match.end()
        stored += text[last:]
        tweet = Tweet(id=tweet_id, text=stored, submitted=text, urls=urls)
        self.tweets.append(tweet)
        return tweet
