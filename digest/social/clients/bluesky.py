"""Bluesky (AT Protocol): a post is an ``app.bsky.feed.post`` record in the account's repo.

Sessions: ``com.atproto.server.createSession`` is rate-limited hard (a few dozen a day per
account), so it runs only when no session is stored. The session (``accessJwt``,
``refreshJwt``, ``did``) is kept in the account's credentials and handed to ``on_credentials``
for encrypted storage; an expired access token is renewed with
``com.atproto.server.refreshSession``, and only a dead refresh token leads back to a login.

Exactly once: the record key is derived from ``post.key`` and the record is made with
``createRecord`` (never ``putRecord``, which would overwrite), so a post can exist only once
under its key, and ``find_published`` reads it back by that key with ``getRecord``.

Credentials: ``app_password`` and optionally ``identifier`` (defaults to the handle) for the
first login; the stored session afterwards.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any, ClassVar

import requests

from digest.social.http import Api, credential, json_body, secret_values, status_outcome
from digest.social.platform import Account, LinkCard, Outcome, PlatformError, Post, Published
from digest.social.text_rules import link_facets

log = logging.getLogger(__name__)

COLLECTION = "app.bsky.feed.post"

# app.bsky.embed.external#external.thumb: {"type": "blob", "accept": ["image/*"],
# "maxSize": 1000000}. A bigger thumbnail would fail the whole post, so it is left out.
THUMB_MAX_BYTES = 1_000_000

# XRPC errors answer {"error": "<Name>", "message": "..."}; the name decides before the
# status does. ExpiredToken and InvalidToken reach this table only after a refresh (and, with
# an app password, a new login) did not help.
ERROR_OUTCOMES: dict[str, Outcome] = {
    "ExpiredToken": Outcome.REAUTH,
    "InvalidToken": Outcome.REAUTH,
    "AuthenticationRequired": Outcome.REAUTH,
    "AuthFactorTokenRequired": Outcome.REAUTH,
    "AccountTakedown": Outcome.GIVE_UP,
    "AccountDeactivated": Outcome.GIVE_UP,
    "InvalidRequest": Outcome.GIVE_UP,
    "RateLimitExceeded": Outcome.RETRY,
    # The record key is taken: an earlier attempt made the post. The reference PDS answers
    # this with a 500 today; atproto#4728 gives it its own error, under this name elsewhere.
    "RecordAlreadyExists": Outcome.UNCLEAR,
}
STATUS_OUTCOMES: dict[int, Outcome] = {401: Outcome.REAUTH, 429: Outcome.RETRY}

# The errors a new session may cure.
SESSION_ERRORS = frozenset({"ExpiredToken", "InvalidToken"})

# TIDs (https://atproto.com/specs/tid): 13 characters of base32-sortable encoding a 64-bit
# integer: a zero bit, 53 bits of microseconds since 1970, 10 bits of clock id.
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
# The derived timestamps fall between 2020-01-01 and mid-2024 (2**47 microseconds later):
# always in the past, so no server can take the key for a clock running ahead.
TID_EPOCH_MICROS = 1_577_836_800_000_000
TID_WINDOW_BITS = 47

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
)


def record_key(post: Post) -> str:
    """A TID derived from ``post.key``: the same on every attempt, and of the syntax the
    post lexicon requires (``"key": "tid"``; the App View ignores posts under other keys)."""
    digest = hashlib.sha256(f"newsroom-digest:{post.key}".encode()).digest()
    bits = int.from_bytes(digest[:8], "big")
    micros = TID_EPOCH_MICROS + ((bits >> 10) & ((1 << TID_WINDOW_BITS) - 1))
    value = (micros << 10) | (bits & 0x3FF)
    chars = []
    for _ in range(13):
        chars.append(TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decide(status: int, error: str | None, *, posts: bool) -> Outcome:
    if error in ERROR_OUTCOMES:
        return ERROR_OUTCOMES[error]
    return status_outcome(status, posts=posts, table=STATUS_OUTCOMES)


def _image_type(card: LinkCard) -> str | None:
    if card.image_type and card.image_type.startswith("image/"):
        return card.image_type
    data = card.image or b""
    for magic, kind in _IMAGE_MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _now() -> str:
    # The lexicon's datetime: RFC 3339 with a timezone, in milliseconds as the official app
    # writes it.
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BlueskyClient:
    platform: ClassVar[str] = "bluesky"

    def __init__(self, account: Account, *, timeout: float = 20.0) -> None:
        self.account = account
        self.api = Api(
            self.platform,
            account.base_url,
            timeout=timeout,
            secrets=lambda: secret_values(account.credentials, "did", "identifier"),
        )

    @property
    def _creds(self) -> dict[str, Any]:
        return self.account.credentials

    def publish(self, post: Post) -> Published:
        rkey = record_key(post)
        record: dict[str, Any] = {
            "$type": COLLECTION,
            "text": post.text,
            "createdAt": _now(),
        }
        facets = link_facets(post.text)
        if facets:
            record["facets"] = facets
        external: dict[str, Any] = {
            "uri": post.card.url,
            "title": post.card.title,
            "description": post.card.description,
        }
        thumb = self._upload_thumb(post.card)
        if thumb is not None:
            external["thumb"] = thumb
        record["embed"] = {"$type": "app.bsky.embed.external", "external": external}
        response = self._authed(
            "POST",
            "com.atproto.repo.createRecord",
            posts=True,
            json={"repo": self._did(), "collection": COLLECTION, "rkey": rkey, "record": record},
        )
        body = json_body(response)
        uri = body.get("uri") if isinstance(body, dict) else None
        if not uri:
            raise self.api.error(response, Outcome.UNCLEAR, "the answer carried no record uri")
        log.info("bluesky: posted %s for %s", uri, post.key)
        return Published(remote_id=uri, url=self._post_url(rkey))

    def find_published(self, post: Post) -> Published | None:
        rkey = record_key(post)
        # getRecord is public: no session needed, and an expired one cannot get in the way.
        repo = self._creds.get("did") or self.account.handle
        response = self.api.send(
            "GET",
            "/xrpc/com.atproto.repo.getRecord",
            params={"repo": repo, "collection": COLLECTION, "rkey": rkey},
        )
        if response.ok:
            body = json_body(response)
            uri = body.get("uri") if isinstance(body, dict) else None
            return Published(
                remote_id=uri or f"at://{repo}/{COLLECTION}/{rkey}", url=self._post_url(rkey)
            )
        name, message = _xrpc_error(response)
        if name == "RecordNotFound":
            return None
        raise self.api.error(response, decide(response.status_code, name, posts=False), message)

    # -- the session ------------------------------------------------------------------------

    def _did(self) -> str:
        self._ensure_session()
        return str(self._creds["did"])

    def _ensure_session(self) -> None:
        if self._creds.get("accessJwt") and self._creds.get("did"):
            return
        identifier = self._creds.get("identifier") or self.account.handle
        response = self.api.send(
            "POST",
            "/xrpc/com.atproto.server.createSession",
            json={
                "identifier": identifier,
                "password": credential(self._creds, "app_password", self.platform),
            },
        )
        self._store_session(response)
        log.info("bluesky: logged in as %s", self.account.handle)

    def _refresh(self) -> None:
        """Renew the access token; when the refresh token is dead too, log in again if an app
        password is stored, else the account needs its owner (REAUTH)."""
        refresh = self._creds.get("refreshJwt")
        if refresh:
            response = self.api.send(
                "POST",
                "/xrpc/com.atproto.server.refreshSession",
                headers={"Authorization": f"Bearer {refresh}"},
            )
            name, _ = _xrpc_error(response)
            dead = name in SESSION_ERRORS or response.status_code == 401
            if not dead:
                # Stores the new session, or raises what the failure means (429, 5xx).
                self._store_session(response)
                log.info("bluesky: refreshed the session of %s", self.account.handle)
                return
        for key in ("accessJwt", "refreshJwt"):
            self._creds.pop(key, None)
        self._ensure_session()

    def _store_session(self, response: requests.Response) -> None:
        body = json_body(response)
        if not response.ok or not isinstance(body, dict):
            name, message = _xrpc_error(response)
            raise self.api.error(response, decide(response.status_code, name, posts=False), message)
        missing = [k for k in ("accessJwt", "refreshJwt", "did") if not body.get(k)]
        if missing:
            raise self.api.error(
                response, Outcome.RETRY, "the session carried no " + ", ".join(missing)
            )
        self._creds.update({k: body[k] for k in ("accessJwt", "refreshJwt", "did")})
        self.account.on_credentials(self._creds)

    def _authed(
        self, method: str, nsid: str, *, posts: bool = False, **kwargs: Any
    ) -> requests.Response:
        """An XRPC call with the session's access token, renewed once if it has expired: an
        expired-token answer means the call was refused, so repeating it is safe even when it
        is the one that posts."""
        self._ensure_session()
        response = self._send_authed(method, nsid, posts=posts, **kwargs)
        name, message = _xrpc_error(response)
        if name in SESSION_ERRORS:
            self._refresh()
            response = self._send_authed(method, nsid, posts=posts, **kwargs)
            name, message = _xrpc_error(response)
        if response.ok:
            return response
        raise self.api.error(response, decide(response.status_code, name, posts=posts), message)

    def _send_authed(
        self, method: str, nsid: str, *, posts: bool, **kwargs: Any
    ) -> requests.Response:
        headers = {
            **kwargs.pop("headers", {}),
            "Authorization": f"Bearer {self._creds['accessJwt']}",
        }
        return self.api.send(method, f"/xrpc/{nsid}", posts=posts, headers=headers, **kwargs)

    # -- the card -------------------------------------------------------------------------------

    def _upload_thumb(self, card: LinkCard) -> dict[str, Any] | None:
        """Upload the card's image as a blob and return the blob reference, or None when there
        is no image, it is too big, or the server refused it (a post without a thumbnail
        beats no post)."""
        mime = _image_type(card)
        if not card.image or mime is None:
            return None
        if len(card.image) > THUMB_MAX_BYTES:
            log.info(
                "bluesky: thumbnail of %d bytes is over the limit; posting without", len(card.image)
            )
            return None
        try:
            response = self._authed(
                "POST",
                "com.atproto.repo.uploadBlob",
                data=card.image,
                headers={"Content-Type": mime},
            )
        except PlatformError as exc:
            if exc.outcome is not Outcome.GIVE_UP:
                raise
            log.warning("bluesky: thumbnail refused (%s); posting without", exc.message)
            return None
        body = json_body(response)
        blob = body.get("blob") if isinstance(body, dict) else None
        if not isinstance(blob, dict):
            raise self.api.error(response, Outcome.RETRY, "the upload answer carried no blob")
        return blob

    def _post_url(self, rkey: str) -> str:
        return f"https://bsky.app/profile/{self.account.handle.lstrip('@')}/post/{rkey}"


def _xrpc_error(response: requests.Response) -> tuple[str | None, str | None]:
    if response.ok:
        return None, None
    body = json_body(response)
    if not isinstance(body, dict):
        return None, None
    name = body.get("error")
    message = body.get("message")
    return (name if isinstance(name, str) else None), (
        f"{name}: {message}" if name and message else message or name
    )
