"""Threads (graph.threads.net): media containers, publishing, the user's posts.

Follows Meta's "Threads Posts" and publishing reference: ``POST /v1.0/{user}/threads`` makes
a container (media_type, text, link_attachment for TEXT), ``POST .../threads_publish`` with
``creation_id`` makes the post; text is at most 500 characters with each emoji counted as its
UTF-8 bytes (as digest.social.text_rules counts it), and at most 5 distinct links. Errors are
Graph errors, {"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}, answered
with HTTP 400 whatever the cause (so a client has to read the code): 190 is a bad token, 4 a
rate limit, 100 a bad parameter. The token may come as a bearer header or an access_token
parameter, as on the real API.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from digest.social.text_rules import measure
from tests.social_fakes.base import Failure, FakeServer, Reply, Request

MAX_CHARACTERS = 500
MAX_LINKS = 5
URL = re.compile(r"https?://[^\s<>\"]+")
MEDIA_TYPES = {"TEXT", "IMAGE", "VIDEO", "CAROUSEL"}


def graph_error(
    message: str,
    code: int,
    *,
    subcode: int | None = None,
    status: int = 400,
    transient: bool = False,
    error_type: str = "OAuthException",
) -> Reply:
    error: dict[str, Any] = {
        "message": message,
        "type": error_type,
        "code": code,
        "fbtrace_id": "A" + secrets.token_hex(8),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    return Reply(status, {"error": error})


@dataclass
class Container:
    id: str
    media_type: str
    text: str
    link: str | None
    published_as: str | None = None


@dataclass
class Media:
    id: str
    text: str
    link: str | None
    permalink: str
    timestamp: str


class ThreadsFake(FakeServer):
    def __init__(self, *, token: str = "threads-token", username: str = "newsroom") -> None:
        super().__init__()
        self.token = token
        self.username = username
        self.user_id = "17841400000000001"
        self.containers: dict[str, Container] = {}
        self.media: list[Media] = []
        self._ids = itertools.count(17890000000000001)
        self.route("POST", r"/v1\.0/(?P<user>[^/]+)/threads", self._create_container)
        self.route("POST", r"/v1\.0/(?P<user>[^/]+)/threads_publish", self._publish)
        self.route("GET", r"/v1\.0/(?P<user>[^/]+)/threads", self._list)
        self.route("GET", r"/v1\.0/(?P<id>\d+)", self._get_media)

    def rate_limit(self, code: int = 4, **kwargs: Any) -> None:
        """Graph's throttling answer: HTTP 400, a limit code, and the usage header."""
        self.fail_next(
            Failure(
                status=400,
                body={
                    "error": {
                        "message": "(#4) Application request limit reached",
                        "type": "OAuthException",
                        "is_transient": True,
                        "code": code,
                        "fbtrace_id": "AlimitReached",
                    }
                },
                headers={
                    "X-App-Usage": json.dumps(
                        {"call_count": 100, "total_cputime": 12, "total_time": 40}
                    )
                },
                **kwargs,
            )
        )

    # -- helpers --------------------------------------------------------------------------------

    def _params(self, request: Request) -> dict[str, str]:
        """Graph reads parameters from the query string and a form or JSON body alike."""
        params = {k: v[-1] for k, v in request.query.items()}
        if request.body:
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type == "application/x-www-form-urlencoded":
                params.update(request.form())
            elif content_type == "application/json":
                body = request.json()
                if isinstance(body, dict):
                    params.update({k: str(v) for k, v in body.items()})
            else:
                raise graph_error(f"Unsupported content type {content_type}", 100)
        return params

    def _authorize(self, request: Request, params: dict[str, str]) -> None:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        token = token or params.get("access_token")
        if token != self.token:
            raise graph_error("Invalid OAuth access token - Cannot parse access token", 190)

    def _user(self, request: Request) -> None:
        if request.params["user"] not in ("me", self.user_id):
            raise graph_error(
                f"Unsupported request - object with ID '{request.params['user']}' does not "
                "exist, cannot be loaded due to missing permissions, or does not support this "
                "operation",
                100,
                subcode=33,
                error_type="GraphMethodException",
            )

    # -- routes ---------------------------------------------------------------------------------

    def _create_container(self, request: Request) -> Reply:
        params = self._params(request)
        self._authorize(request, params)
        self._user(request)
        media_type = params.get("media_type")
        if media_type not in MEDIA_TYPES:
            raise graph_error("(#100) The parameter media_type is required", 100)
        text = params.get("text", "")
        if media_type == "TEXT" and not text:
            raise graph_error("(#100) The parameter text is required for TEXT posts", 100)
        if not measure("threads", text).fits:
            raise graph_error(
                f"(#100) Param text must be at most {MAX_CHARACTERS} characters long", 100
            )
        link = params.get("link_attachment")
        if link is not None:
            if media_type != "TEXT":
                raise graph_error("(#100) link_attachment is only supported for TEXT posts", 100)
            if not URL.fullmatch(link):
                raise graph_error("(#100) Param link_attachment must be a valid URL", 100)
        links = set(URL.findall(text)) | ({link} if link else set())
        if len(links) > MAX_LINKS:
            raise graph_error("THREADS_API__LINK_LIMIT_EXCEEDED", 100)
        container = Container(str(next(self._ids)), media_type, text, link)
        with self.lock:
            self.containers[container.id] = container
        return Reply(200, {"id": container.id})

    def _publish(self, request: Request) -> Reply:
        params = self._params(request)
        self._authorize(request, params)
        self._user(request)
        creation_id = params.get("creation_id")
        if not creation_id:
            raise graph_error("(#100) The parameter creation_id is required", 100)
        with self.lock:
            container = self.containers.get(creation_id)
            if container is None:
                raise graph_error("(#9007) Media ID is not available", 9007, subcode=2207027)
            if container.published_as is not None:
                # The fake's choice (the real answer is undocumented): a container makes one post.
                raise graph_error("(#100) The media container has already been published", 100)
            media = Media(
                id=str(next(self._ids)),
                text=container.text,
                link=container.link,
                permalink=f"https://www.threads.net/@{self.username}/post/"
                + secrets.token_urlsafe(8),
                timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
            )
            container.published_as = media.id
            self.media.append(media)
        return Reply(200, {"id": media.id})

    def _list(self, request: Request) -> Reply:
        params = self._params(request)
        self._authorize(request, params)
        self._user(request)
        fields = set(params.get("fields", "id").split(",")) | {"id"}
        limit = int(params.get("limit", "25"))
        with self.lock:
            newest_first = list(reversed(self.media))[:limit]
        return Reply(200, {"data": [self._fields(m, fields) for m in newest_first]})

    def _get_media(self, request: Request) -> Reply:
        params = self._params(request)
        self._authorize(request, params)
        fields = set(params.get("fields", "id").split(",")) | {"id"}
        with self.lock:
            found = next((m for m in self.media if m.id == request.params["id"]), None)
        if found is None:
            raise graph_error(
                f"Unsupported get request. Object with ID '{request.params['id']}' does not exist",
                100,
                subcode=33,
                error_type="GraphMethodException",
            )
        return Reply(200, self._fields(found, fields))

    def _fields(self, media: Media, fields: set[str]) -> dict[str, Any]:
        values = {
            "id": media.id,
            "text": media.text,
            "permalink": media.permalink,
            "link_attachment_url": media.link,
            "timestamp": media.timestamp,
            "media_type": "TEXT_POST",
            "username": self.username,
        }
        return {k: v for k, v in values.items() if k in fields and v is not None}
