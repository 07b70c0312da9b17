"""What every platform client offers, and how a failed call is judged.

A client is a small class on ``requests`` that speaks one platform's real endpoints and auth.
It knows nothing of the database: the queue (digest.social.queue) gives it a ``Post`` built from
a social post row, stores what it returns, and decides from ``PlatformError.outcome`` whether to
retry, re-authenticate or give up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class Outcome(enum.StrEnum):
    """What the queue does after a failed call (each platform's table maps responses here)."""

    # Try again later (after ``retry_after`` when the platform said so).
    RETRY = "retry"
    # The token expired or was revoked: refresh or re-authenticate, then try again.
    REAUTH = "reauth"
    # The post can never succeed as it is (bad request, too long, forbidden): stop.
    GIVE_UP = "give_up"
    # The request may have reached the platform (a timeout, a 5xx after the body was sent):
    # read back before any retry, so a post that landed is not made twice.
    UNCLEAR = "unclear"


class PlatformError(Exception):
    """A call failed; ``outcome`` says what to do, ``message`` is safe to store and show
    (it never contains credentials)."""

    def __init__(
        self,
        message: str,
        outcome: Outcome,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class LinkCard:
    """The shared story, from our own story data (never scraped from the page)."""

    url: str
    title: str
    description: str
    image_url: str | None = None
    # The thumbnail's bytes and type when the caller has them (Bluesky uploads them as a blob).
    image: bytes | None = None
    image_type: str | None = None


@dataclass(frozen=True)
class Post:
    """One post to make. ``key`` is derived from the social post row (story, account,
    variant) and is the same on every attempt: clients derive idempotency keys and record
    keys from it, and read back by it."""

    key: str
    text: str
    card: LinkCard


@dataclass(frozen=True)
class Published:
    remote_id: str
    url: str | None = None


@dataclass
class Account:
    """What a client needs of an account: its handle, the platform's base URL (overridable
    so tests point clients at local servers), and the decrypted credentials. A client that
    refreshes a session (Bluesky) updates ``credentials`` and calls ``on_credentials`` so
    the caller can store them encrypted again."""

    handle: str
    base_url: str
    # Never in a repr: a traceback or a log line that shows the account must not show these.
    credentials: dict[str, Any] = field(repr=False)
    on_credentials: Callable[[Mapping[str, Any]], None] = field(default=lambda _c: None)


class Client(Protocol):
    platform: ClassVar[str]

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None: ...

    def publish(self, post: Post) -> Published:
        """Make the post; raise PlatformError on failure."""

    def find_published(self, post: Post) -> Published | None:
        """Read back whether ``post`` already landed (after an unclear failure). Platforms
        with no way to look a post up by key search the account's recent posts for the
        post's link."""
