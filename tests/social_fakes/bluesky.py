"""A Bluesky PDS: sessions, blobs and ``app.bsky.feed.post`` records.

Follows the com.atproto lexicons (server.createSession, server.refreshSession,
repo.uploadBlob, repo.createRecord, repo.getRecord) and app.bsky.feed.post /
app.bsky.richtext.facet / app.bsky.embed.external. XRPC errors are {"error", "message"}; an
expired access token is 400 ExpiredToken, an unknown one 401 InvalidToken; a createRecord on
an existing record key answers 500 InternalServerError, as the reference PDS does
(bluesky-social/atproto#3718); 429 carries RateLimit-Limit/Remaining/Reset/Policy with the
reset in epoch seconds.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import regex

from tests.social_fakes.base import Failure, FakeServer, Reply, Request

POST = "app.bsky.feed.post"
TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
MAX_GRAPHEMES = 300
MAX_BYTES = 3000
THUMB_MAX = 1_000_000
BLOB_MAX = 5_000_000


def _cid(data: bytes, prefix: str) -> str:
    return prefix + base64.b32encode(hashlib.sha256(data).digest()).decode().lower().rstrip("=")


def _bad(message: str, error: str = "InvalidRequest", status: int = 400) -> Reply:
    return Reply(status, {"error": error, "message": message})


@dataclass
class Blob:
    cid: str
    mime: str
    data: bytes


class BlueskyFake(FakeServer):
    def __init__(
        self,
        *,
        handle: str = "newsroom.bsky.social",
        did: str = "did:plc:newsroomfake0000000000000",
        app_password: str = "abcd-efgh-ijkl-mnop",
    ) -> None:
        super().__init__()
        self.handle = handle
        self.did = did
        self.app_password = app_password
        self.access_tokens: dict[str, bool] = {}  # token -> expired
        self.refresh_tokens: set[str] = set()
        self.create_sessions = 0
        self.refreshes = 0
        self.issued: list[str] = []  # every token ever handed out
        self.blobs: dict[str, Blob] = {}
        self.records: dict[str, dict[str, Any]] = {}  # rkey -> {"uri", "cid", "value"}
        self.route("POST", r"/xrpc/com\.atproto\.server\.createSession", self._create_session)
        self.route("POST", r"/xrpc/com\.atproto\.server\.refreshSession", self._refresh_session)
        self.route("POST", r"/xrpc/com\.atproto\.repo\.uploadBlob", self._upload_blob)
        self.route("POST", r"/xrpc/com\.atproto\.repo\.createRecord", self._create_record)
        self.route("GET", r"/xrpc/com\.atproto\.repo\.getRecord", self._get_record)

    # -- test helpers ---------------------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token in self.access_tokens:
                self.access_tokens[token] = True

    def revoke_refresh_tokens(self) -> None:
        with self.lock:
            self.refresh_tokens.clear()

    def rate_limit(self, seconds: int = 300, **kwargs: Any) -> None:
        self.fail_next(
            Failure(
                status=429,
                body={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                headers={
                    "RateLimit-Limit": "3000",
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(int(time.time()) + seconds),
                    "RateLimit-Policy": "3000;w=300",
                },
                **kwargs,
            )
        )

    # -- sessions -------------------------------------------------------------------------------

    def _issue(self) -> dict[str, Any]:
        access, refresh = "acc-" + secrets.token_urlsafe(24), "ref-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access_tokens[access] = False
            self.refresh_tokens.add(refresh)
            self.issued += [access, refresh]
        return {
            "did": self.did,
            "handle": self.handle,
            "accessJwt": access,
            "refreshJwt": refresh,
            "active": True,
        }

    def _create_session(self, request: Request) -> Reply:
        self._json_content(request)
        body = request.json()
        if not isinstance(body, dict) or not {"identifier", "password"} <= body.keys():
            raise _bad("Input must have the properties identifier and password")
        with self.lock:
            self.create_sessions += 1
        if (
            body["identifier"] not in (self.handle, self.did)
            or body["password"] != self.app_password
        ):
            raise _bad("Invalid identifier or password", "AuthenticationRequired", 401)
        return Reply(200, self._issue())

    def _refresh_session(self, request: Request) -> Reply:
        token = self._bearer(request)
        with self.lock:
            if token not in self.refresh_tokens:
                raise _bad("Token has been revoked", "ExpiredToken")
            # The PDS rotates refresh tokens: the old one is spent.
            self.refresh_tokens.discard(token)
            self.refreshes += 1
        return Reply(200, self._issue())

    def _bearer(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise _bad("Authentication Required", "AuthMissing", 401)
        return auth.removeprefix("Bearer ")

    def _authorize(self, request: Request) -> None:
        token = self._bearer(request)
        with self.lock:
            expired = self.access_tokens.get(token)
        if expired is None:
            raise _bad("Token could not be verified", "InvalidToken", 401)
        if expired:
            raise _bad("Token has expired", "ExpiredToken")

    def _json_content(self, request: Request) -> None:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _bad("Wrong request encoding (Content-Type): expected application/json")

    # -- repo -----------------------------------------------------------------------------------

    def _upload_blob(self, request: Request) -> Reply:
        self._authorize(request)
        mime = request.headers.get("content-type", "").split(";")[0].strip()
        if not mime:
            raise _bad("Request encoding (Content-Type) required but not provided")
        if len(request.body) > BLOB_MAX:
            raise _bad("request entity too large", "PayloadTooLarge", 413)
        cid = _cid(request.body, "bafkrei")
        with self.lock:
            self.blobs[cid] = Blob(cid, mime, request.body)
        return Reply(
            200,
            {
                "blob": {
                    "$type": "blob",
                    "ref": {"$link": cid},
                    "mimeType": mime,
                    "size": len(request.body),
                }
            },
        )

    def _create_record(self, request: Request) -> Reply:
        self._authorize(request)
        self._json_content(request)
        body = request.json()
        if not isinstance(body, dict):
            raise _bad("Input must be an object")
        if body.get("repo") not in (self.did, self.handle):
            raise _bad(f"Could not find repo: {body.get('repo')}")
        if body.get("collection") != POST:
            raise _bad(f"Unexpected collection {body.get('collection')!r} (this fake knows posts)")
        rkey = body.get("rkey")
        if not isinstance(rkey, str) or not TID.match(rkey):
            raise _bad(f"Invalid record key for {POST}: must be a TID")
        record = body.get("record")
        self._validate_post(record)
        with self.lock:
            if rkey in self.records:
                # What the reference PDS answers today: the repo refuses the duplicate key deep
                # inside and the error surfaces as a 500.
                raise _bad("Internal Server Error", "InternalServerError", 500)
            uri = f"at://{self.did}/{POST}/{rkey}"
            cid = _cid(repr(record).encode(), "bafyrei")
            self.records[rkey] = {"uri": uri, "cid": cid, "value": record}
        return Reply(
            200,
            {
                "uri": uri,
                "cid": cid,
                "commit": {"cid": _cid(cid.encode(), "bafyrei"), "rev": rkey},
                "validationStatus": "valid",
            },
        )

    def _get_record(self, request: Request) -> Reply:
        repo = request.query.get("repo", [""])[-1]
        collection = request.query.get("collection", [""])[-1]
        rkey = request.query.get("rkey", [""])[-1]
        if not (repo and collection and rkey):
            raise _bad("Params must have the properties repo, collection and rkey")
        if repo not in (self.did, self.handle):
            raise _bad(f"Could not find repo: {repo}", "RepoNotFound")
        with self.lock:
            found = self.records.get(rkey) if collection == POST else None
        if found is None:
            raise _bad(
                f"Could not locate record: at://{self.did}/{collection}/{rkey}", "RecordNotFound"
            )
        return Reply(200, found)

    # -- app.bsky.feed.post ---------------------------------------------------------------------

    def _validate_post(self, record: Any) -> None:
        prefix = f"Invalid {POST} record: "
        if not isinstance(record, dict):
            raise _bad(prefix + "Record must be an object")
        if record.get("$type") != POST:
            raise _bad(prefix + f"Record/$type must be {POST}")
        text = record.get("text")
        if not isinstance(text, str):
            raise _bad(prefix + 'Record must have the property "text"')
        encoded = text.encode()
        if len(regex.findall(r"\X", text)) > MAX_GRAPHEMES:
            raise _bad(prefix + f"Record/text must not be longer than {MAX_GRAPHEMES} graphemes")
        if len(encoded) > MAX_BYTES:
            raise _bad(prefix + f"Record/text must not be longer than {MAX_BYTES} characters")
        try:
            created = datetime.fromisoformat(str(record.get("createdAt")))
        except ValueError:
            created = None
        if created is None or created.tzinfo is None:
            raise _bad(prefix + "Record/createdAt must be an valid atproto datetime")
        for n, facet in enumerate(record.get("facets") or []):
            self._validate_facet(prefix + f"Record/facets/{n}", facet, encoded)
        embed = record.get("embed")
        if embed is not None:
            self._validate_external(prefix + "Record/embed", embed)

    def _validate_facet(self, where: str, facet: Any, encoded: bytes) -> None:
        index = facet.get("index") if isinstance(facet, dict) else None
        start = index.get("byteStart") if isinstance(index, dict) else None
        end = index.get("byteEnd") if isinstance(index, dict) else None
        if not (
            isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(encoded)
        ):
            raise _bad(f"{where}/index must be a byte range inside the text")

        def on_boundary(offset: int) -> bool:
            # A UTF-8 continuation byte is 0b10xxxxxx: no character starts there.
            return offset == len(encoded) or encoded[offset] & 0xC0 != 0x80

        if not (on_boundary(start) and on_boundary(end)):
            raise _bad(f"{where}/index must fall on UTF-8 character boundaries")
        features = facet.get("features")
        if not isinstance(features, list) or not features:
            raise _bad(f"{where}/features must be a non-empty array")
        for feature in features:
            if (
                not isinstance(feature, dict)
                or feature.get("$type") != "app.bsky.richtext.facet#link"
            ):
                raise _bad(f"{where}/features must be links (this fake knows no other kind)")
            if feature.get("uri") != encoded[start:end].decode():
                raise _bad(f"{where}: the link's uri is not the text it covers")

    def _validate_external(self, where: str, embed: Any) -> None:
        if not isinstance(embed, dict) or embed.get("$type") != "app.bsky.embed.external":
            raise _bad(f"{where}/$type must be app.bsky.embed.external")
        external = embed.get("external")
        if not isinstance(external, dict):
            raise _bad(f'{where} must have the property "external"')
        for name in ("uri", "title", "description"):
            if not isinstance(external.get(name), str):
                raise _bad(f'{where}/external must have the property "{name}"')
        if not re.match(r"^[a-z][a-z0-9+.-]*:", external["uri"]):
            raise _bad(f"{where}/external/uri must be a uri")
        thumb = external.get("thumb")
        if thumb is None:
            return
        if not isinstance(thumb, dict) or thumb.get("$type") != "blob":
            raise _bad(f"{where}/external/thumb should be a blob ref")
        ref = thumb.get("ref")
        cid = ref.get("$link") if isinstance(ref, dict) else None
        with self.lock:
            blob = self.blobs.get(cid) if isinstance(cid, str) else None
        if blob is None:
            raise _bad(f"{where}/external/thumb should be a blob ref of an uploaded blob")
        if not blob.mime.startswith("image/"):
            raise _bad(f"{where}/external/thumb mimeType ({blob.mime}) not accepted")
        if len(blob.data) > THUMB_MAX:
            raise _bad(f"{where}/external/thumb file too big (max {THUMB_MAX})", "BlobTooLarge")
