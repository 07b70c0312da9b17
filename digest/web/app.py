"""The web app: tracked clicks and the open pixel, health and metrics; the reader's pages
(digest.web.reader_pages) and the JSON API (digest.web.api) are routers mounted here.

Routes translate HTTP into calls on the domain and back; they hold no logic of their own. The
click and open routes never wait for the database: the link's target comes from a cache (links
never change once an edition is prepared), the event goes to the journal
(digest.event_journal), and a background task stores the journal's batches.

The click and the pixel take a newsletter's traffic in bursts (an edition lands in every inbox at
once), so they are served by a small ASGI middleware ahead of FastAPI's router: no request
object, no dependency resolution, response headers from bytes prepared once: ~37 µs of
application time per click instead of ~100 µs through FastAPI (bench/RESULTS.md, issue 8).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from digest import __version__
from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.event_journal import Event, EventJournal, recover
from digest.health import OK, UNAVAILABLE, readiness
from digest.logs import configure_logging
from digest.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from digest.metrics import render as render_metrics
from digest.models import utcnow
from digest.tokens import TokenSigner
from digest.tracking import USER_AGENT_MAX, builds_link_preview, link_target, truncate_ip
from digest.web import api, edition_pages, reader_pages, social_api
from digest.web.deps import NO_STORE
from digest.web.link_previews import LinkPreviews

log = logging.getLogger(__name__)

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class LinkCache:
    """Link id → the link's target as a ready Location header value. Links are immutable once
    their edition is prepared, so entries never go stale; the size bound only caps memory."""

    def __init__(self, sessions: sessionmaker[Session], size: int = 100_000) -> None:
        self.sessions = sessions
        self.size = size
        self._locations: dict[int, bytes] = {}

    def _load(self, link_id: int) -> str | None:
        with self.sessions() as session:
            return link_target(session, link_id)

    async def location(self, link_id: int) -> bytes | None:
        location = self._locations.get(link_id)
        if location is None:
            url = await run_in_threadpool(self._load, link_id)
            if url is None:
                return None
            # Quoted as Starlette's RedirectResponse quotes it.
            location = quote(url, safe=":/%#?=@[]!$&'()*+,;").encode("latin-1")
            if len(self._locations) >= self.size:
                self._locations.pop(next(iter(self._locations)))  # oldest first
            self._locations[link_id] = location
        return location


Message = MutableMapping[str, Any]
READINESS_CACHE_SECONDS = 2.0


def _response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[Message, Message]:
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


_NO_STORE = (b"cache-control", NO_STORE["Cache-Control"].encode())
_NO_BODY = (b"content-length", b"0")
_PIXEL_RESPONSE = _response(
    200,
    [(b"content-type", b"image/gif"), (b"content-length", b"%d" % len(PIXEL)), _NO_STORE],
    PIXEL,
)
_HTML = (b"content-type", b"text/html; charset=utf-8")
_NOT_FOUND_BODY = b'{"detail":"Not Found"}'
_NOT_FOUND = _response(
    404,
    [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_NOT_FOUND_BODY))],
    _NOT_FOUND_BODY,
)
_METHOD_NOT_ALLOWED_BODY = b'{"detail":"Method Not Allowed"}'
_METHOD_NOT_ALLOWED = _response(
    405,
    [
        (b"allow", b"GET, HEAD"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_METHOD_NOT_ALLOWED_BODY)),
    ],
    _METHOD_NOT_ALLOWED_BODY,
)


class Tracking:
    """The click and the open pixel. A GET is journaled before its answer goes out; a HEAD
    (link checkers and mail scanners probe with HEAD) gets the same answer and records
    nothing. Each returns the response's two ASGI messages."""

    def __init__(self, signer: TokenSigner, links: LinkCache, previews: LinkPreviews) -> None:
        self.signer = signer
        self.links = links
        self.previews = previews
        self.journal: EventJournal | None = None  # set by the app's lifespan

    async def click(self, scope: Scope, token: str) -> tuple[Message, Message]:
        ids = self.signer.read_click_token(token)
        location = await self.links.location(ids[0]) if ids else None
        if ids is None or location is None:
            return _NOT_FOUND
        agent = _user_agent(scope)
        # A link-preview crawler gets the story's card, not the news site's (digest.web.
        # link_previews); the crawler's GET is journaled all the same, and classed as a bot.
        page = await self.previews.page(ids[0]) if agent and builds_link_preview(agent) else None
        if scope["method"] == "GET":
            self._record(scope, "clicks", ids[1], ids[0], agent)
        if page is not None:
            # no-store, as the redirect: this URL answers crawlers and people differently, so
            # no shared cache may keep either answer, and every fetch must reach the journal.
            return _response(200, [_HTML, (b"content-length", b"%d" % len(page)), _NO_STORE], page)
        return _response(302, [(b"location", location), _NO_STORE, _NO_BODY])

    async def open_pixel(self, scope: Scope, token: str) -> tuple[Message, Message]:
        delivery_id = self.signer.read_open_token(token)
        if delivery_id is not None and scope["method"] == "GET":
            self._record(scope, "opens", delivery_id, None, _user_agent(scope))
        # Always the pixel: a broken image in a reader's mail client helps nobody.
        return _PIXEL_RESPONSE

    def _record(
        self,
        scope: Scope,
        table: str,
        delivery_id: int | None,
        link_id: int | None,
        agent: str | None,
    ) -> None:
        journal = self.journal
        if journal is None:
            raise RuntimeError("a tracking route was called before the app's lifespan started")
        client = scope.get("client")
        journal.record(
            Event(
                key=journal.next_key(),
                table=table,
                at=utcnow(),
                delivery_id=delivery_id,
                link_id=link_id,
                ip_prefix=truncate_ip(client[0] if client else None),
                user_agent=agent,
            )
        )


def _user_agent(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"user-agent":
            return value.decode("latin-1")[:USER_AGENT_MAX] or None
    return None


class TrackingRoutes:
    """ASGI middleware that serves ``/c/{token}`` and ``/o/{token}`` itself and passes
    everything else on to the app."""

    def __init__(self, app: ASGIApp, tracking: Tracking) -> None:
        self.app = app
        self.tracking = tracking

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        token = path[3:]
        if not token or "/" in token or path[:3] not in ("/c/", "/o/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            start, body = _METHOD_NOT_ALLOWED
        elif path[1] == "c":
            start, body = await self.tracking.click(scope, token)
        else:
            start, body = await self.tracking.open_pixel(scope, token)
        await send(start)
        await send(body)


async def _flush_forever(journal: EventJournal, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        journal.rotate()
        try:
            await asyncio.to_thread(journal.store_pending)
        except Exception:
            # The database is away: the batches stay pending and on disk; retried next tick.
            log.exception("storing tracking events failed; retrying")


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without the ``input`` it echoes for each invalid field: a request that
    connects a social account carries its credentials, and no answer may show them."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    # Each web worker process is started afresh by uvicorn: its logging is set up here.
    configure_logging(settings)
    sessions: sessionmaker[Session] = session_factory(settings.database_url)
    signer = TokenSigner(settings.secret_keys)
    tracking = Tracking(signer, LinkCache(sessions), LinkPreviews(sessions))
    journal_dir = settings.data_dir / "events"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(recover, journal_dir, sessions)
        # The collector's passes were the click's p99 tail (92 ms, 34 ms without them;
        # bench/RESULTS.md): freeze what startup built (modules, the app) so no pass walks it
        # again, and collect young objects ~140 times less often (the default is every 700
        # allocations); the request path makes few reference cycles.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        journal = EventJournal(journal_dir, sessions)
        tracking.journal = journal
        flusher = asyncio.create_task(_flush_forever(journal, settings.tracking_flush_seconds))
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            journal.rotate()
            try:
                await asyncio.to_thread(journal.store_pending)
            except Exception:
                log.exception("tracking events left in the journal for the next start")
            journal.close()

    app = FastAPI(title="Newsroom Digest", version=__version__, lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.state.sessions = sessions
    app.state.settings = settings
    app.state.signer = signer
    app.include_router(api.router)
    app.include_router(social_api.router)
    app.include_router(reader_pages.router)
    app.include_router(edition_pages.router)

    app.add_middleware(TrackingRoutes, tracking=tracking)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. Nothing else is asked (see digest.health)."""
        return {"status": OK}

    # /readyz is public: answered from a result at most this old, so that polling it hard
    # cannot turn into load on the database and the broker.
    ready_cache: list[tuple[float, dict[str, str]]] = []

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not ready_cache or time.monotonic() - ready_cache[0][0] > READINESS_CACHE_SECONDS:
            ready_cache[:] = [
                (time.monotonic(), await run_in_threadpool(readiness, settings, sessions))
            ]
        checks = ready_cache[0][1]
        ready = all(state == OK for state in checks.values())
        body = {"status": OK if ready else UNAVAILABLE, "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503, headers=NO_STORE)

    @app.get("/metrics", dependencies=[Depends(api.require_token)])
    async def metrics() -> Response:
        body = await run_in_threadpool(render_metrics, settings, sessions)
        return Response(body, media_type=METRICS_CONTENT_TYPE, headers=NO_STORE)

    return app
