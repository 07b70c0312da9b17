"""What every platform client shares about HTTP: one requests session, a timeout on every call,
the judgement of transport failures, rate-limit headers read into ``retry_after``, and error
messages that can never carry a credential.

The one question that matters after a failure is whether the post may have landed. A request
that never reached the server (refused connection, failed TLS handshake, connect timeout) made
nothing, so it is retried. A request that was sent and then went unanswered (read timeout,
dropped connection) or answered with a 5xx may have been acted on: when that request is the one
that makes the post (``posts=True``) the outcome is UNCLEAR, and the queue reads back before
any retry. Any other request (a login, an upload, a read) is harmless to repeat: RETRY.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from digest import __version__
from digest.social.platform import Outcome, PlatformError

log = logging.getLogger(__name__)
# urllib3 logs each request line at DEBUG, and some platforms put the secret in the path (a
# Telegram bot token, Discord and Slack webhook URLs): its debug lines are never let through.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

USER_AGENT = f"newsroom-digest/{__version__} (+requests)"

# What a status means when the platform's own table says nothing more specific. 408 is the
# server saying it gave up waiting for our request, so nothing was done.
COMMON_STATUS_OUTCOMES: Mapping[int, Outcome] = {
    400: Outcome.GIVE_UP,
    401: Outcome.REAUTH,
    403: Outcome.GIVE_UP,
    404: Outcome.GIVE_UP,
    408: Outcome.RETRY,
    413: Outcome.GIVE_UP,
    422: Outcome.GIVE_UP,
    429: Outcome.RETRY,
}

# Rate-limit headers in the order they are trusted: the standard one first, then the
# platforms' own (X: x-rate-limit-reset; Bluesky: ratelimit-reset; Mastodon: x-ratelimit-reset).
RATE_LIMIT_HEADERS = ("retry-after", "x-rate-limit-reset", "ratelimit-reset", "x-ratelimit-reset")

# Error texts from platforms are stored and shown; a page of HTML from a proxy is not useful.
MAX_DETAIL = 300

REDACTED = "[redacted]"


def status_outcome(
    status: int, *, posts: bool, table: Mapping[int, Outcome] | None = None
) -> Outcome:
    """The outcome of an HTTP status: the platform's ``table`` first, then the common one. A
    5xx on the request that makes the post is UNCLEAR (the server may have stored it before
    failing); on any other request it is worth retrying."""
    if table and status in table:
        return table[status]
    if status in COMMON_STATUS_OUTCOMES:
        return COMMON_STATUS_OUTCOMES[status]
    if status >= 500:
        return Outcome.UNCLEAR if posts else Outcome.RETRY
    # Other 4xx, and a 3xx: redirects are not followed (a redirected POST becomes a GET), so a
    # 3xx means the account's base URL is wrong, and repeating will not fix it.
    return Outcome.GIVE_UP


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait, from whichever rate-limit header the platform sent, or None."""
    now = time.time() if now is None else now
    for name in RATE_LIMIT_HEADERS:
        value = _header(headers, name)
        if value:
            seconds = _seconds_until(value.strip(), now)
            if seconds is not None:
                return seconds
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # requests' headers are case-insensitive; a plain dict (tests, fakes) may not be.
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def _seconds_until(value: str, now: float) -> float | None:
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        # Retry-After is delta-seconds; X's and Bluesky's reset headers are epoch seconds. No
        # platform asks for a wait of decades, so a number past 1e9 is a point in time.
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    when: datetime | None
    try:
        when = email.utils.parsedate_to_datetime(value)  # Retry-After as an HTTP-date
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value)  # Mastodon's X-RateLimit-Reset (ISO 8601)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def json_body(response: requests.Response) -> Any:
    """The decoded JSON of an answer, or None when it is not JSON (a proxy's HTML page)."""
    try:
        return response.json()
    except ValueError:
        return None


def redact(text: str, secrets: Iterable[object]) -> str:
    """``text`` with every credential value replaced, so a platform that echoes a token back
    in an error cannot put it into our logs or database."""
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4 and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def credential(credentials: Mapping[str, Any], name: str, platform: str) -> str:
    """One credential, or a REAUTH error naming (never showing) what is missing."""
    value = credentials.get(name)
    if not isinstance(value, str) or not value:
        raise PlatformError(
            f"{platform}: the account has no {name}; connect it again", Outcome.REAUTH
        )
    return value


def secret_values(credentials: Mapping[str, Any], *public: str) -> list[object]:
    """The credential values to redact from messages: all of them but the ``public`` ones
    (account ids, handles), which are not secret and make a message readable."""
    return [value for name, value in credentials.items() if name not in public]


def webhook_match(
    url: object, hosts: Collection[str], path: re.Pattern[str]
) -> re.Match[str] | None:
    """The webhook path of ``url`` (a match, with its parts), if ``url`` is an https URL on
    one of ``hosts``; else None. Clients use only the path, joined to the account's base URL,
    so a pasted URL cannot send a worker to another host."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme != "https" or host not in hosts:
        return None
    return path.fullmatch(parts.path)


def webhook_path(match: re.Match[str] | None, missing: str) -> str:
    """The path to post to; PlatformError(GIVE_UP, ``missing``) when the stored URL is not a
    webhook URL. Missing or malformed alike: a webhook has no token to refresh, so like a
    deleted one this is for an editor to fix, not a re-authentication."""
    if match is None:
        raise PlatformError(missing, Outcome.GIVE_UP)
    return match[0].rstrip("/")


def _sent_nothing(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened before the request was written: no connection was
    made, or TLS failed during the handshake."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    cause: object = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


_UNBUILDABLE = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


class Api:
    """A session bound to one platform's base URL. ``secrets`` returns the account's current
    credential values; every message this class builds is redacted against them."""

    def __init__(
        self,
        platform: str,
        base_url: str,
        *,
        timeout: float,
        secrets: Callable[[], Iterable[object]],
    ) -> None:
        self.platform = platform
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._secrets = secrets
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def url(self, path: str) -> str:
        return path if "://" in path else self.base_url + path

    def send(
        self, method: str, path: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        """Make one request and return whatever the platform answered; raise PlatformError only
        for transport failures. ``posts`` marks the request that makes the post."""
        url = self.url(path)
        try:
            return self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except _UNBUILDABLE as exc:
            # Nothing was sent: the base URL or a header value (a credential with a newline)
            # is malformed, and repeating will not mend it.
            raise self._transport_error(
                method, url, "the request could not be built", exc, Outcome.GIVE_UP
            ) from None
        except requests.exceptions.ConnectionError as exc:
            if _sent_nothing(exc):
                outcome, what = Outcome.RETRY, "could not connect"
            else:
                outcome = Outcome.UNCLEAR if posts else Outcome.RETRY
                what = "connection lost before an answer"
            raise self._transport_error(method, url, what, exc, outcome) from None
        except requests.exceptions.Timeout as exc:
            # A connect timeout is a ConnectionError and handled above: this one is a read
            # timeout, after the whole request was sent.
            outcome = Outcome.UNCLEAR if posts else Outcome.RETRY
            raise self._transport_error(method, url, "no answer in time", exc, outcome) from None
        except requests.exceptions.RequestException as exc:
            outcome = Outcome.UNCLEAR if posts else Outcome.RETRY
            raise self._transport_error(method, url, "request failed", exc, outcome) from None

    def error(
        self,
        response: requests.Response,
        outcome: Outcome,
        detail: str | None = None,
    ) -> PlatformError:
        """A PlatformError for an answer: status, the platform's own error text, and how long
        to wait when the outcome is RETRY."""
        method = response.request.method or "?"
        where = f"{method} {urlsplit(response.url).path}"
        text = f"{self.platform}: {where} answered {response.status_code}"
        if detail:
            # Redacted before it is cut short, so no secret survives in part.
            text += ": " + " ".join(self.redact(detail).split())[:MAX_DETAIL]
        return PlatformError(
            self.redact(text),
            outcome,
            status=response.status_code,
            retry_after=retry_after(response.headers) if outcome is Outcome.RETRY else None,
        )

    def redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def _transport_error(
        self, method: str, url: str, what: str, exc: Exception, outcome: Outcome
    ) -> PlatformError:
        # The exception's own text carries the full URL (query strings included), so only
        # its type is kept.
        text = f"{self.platform}: {method} {urlsplit(url).path}: {what} ({type(exc).__name__})"
        log.debug("%s", self.redact(text))
        return PlatformError(self.redact(text), outcome)
