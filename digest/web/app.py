"""Public routes: tracked clicks, the open pixel, one-click unsubscribe, health.

Routes translate HTTP into calls on the domain and back; they hold no logic of their own. The
click and open routes never wait for the database: the link's target comes from a cache (links
never change once an edition is prepared), the event goes to the journal
(digest.event_journal), and a background task stores the journal's batches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from digest import __version__
from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.event_journal import Event, EventJournal, recover
from digest.models import utcnow
from digest.render import environment
from digest.subscriptions import unsubscribe
from digest.tokens import TokenSigner
from digest.tracking import USER_AGENT_MAX, link_target, truncate_ip
from digest.web import api

log = logging.getLogger(__name__)

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, max-age=0"}


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(_session)]


class LinkCache:
    """Link id → target URL. Links are immutable once their edition is prepared, so entries
    never go stale; the size bound only caps memory."""

    def __init__(self, sessions: sessionmaker[Session], size: int = 100_000) -> None:
        self.sessions = sessions
        self.size = size
        self._urls: dict[int, str] = {}

    def _load(self, link_id: int) -> str | None:
        with self.sessions() as session:
            return link_target(session, link_id)

    async def target(self, link_id: int) -> str | None:
        url = self._urls.get(link_id)
        if url is None:
            url = await run_in_threadpool(self._load, link_id)
            if url is not None:
                if len(self._urls) >= self.size:
                    self._urls.pop(next(iter(self._urls)))  # oldest first (insertion order)
                self._urls[link_id] = url
        return url


async def _flush_forever(journal: EventJournal, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        journal.rotate()
        try:
            await asyncio.to_thread(journal.store_pending)
        except Exception:
            # The database is away: the batches stay pending and on disk; retried next tick.
            log.exception("storing tracking events failed; retrying")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    sessions: sessionmaker[Session] = session_factory(settings.database_url)
    signer = TokenSigner(settings.secret_keys)
    links = LinkCache(sessions)
    journal_dir = settings.data_dir / "events"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(recover, journal_dir, sessions)
        journal = EventJournal(journal_dir, sessions)
        app.state.journal = journal
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
    app.state.sessions = sessions
    app.state.settings = settings
    app.include_router(api.router)

    def page(template: str, status_code: int = 200, **context: object) -> HTMLResponse:
        body = environment().get_template(f"web/{template}").render(context)
        return HTMLResponse(body, status_code=status_code, headers=NO_STORE)

    def event(request: Request, table: str, delivery_id: int | None, link_id: int | None) -> None:
        journal: EventJournal = request.app.state.journal
        agent = request.headers.get("user-agent")
        journal.record(
            Event(
                key=journal.next_key(),
                table=table,
                at=utcnow(),
                delivery_id=delivery_id,
                link_id=link_id,
                ip_prefix=truncate_ip(request.client.host if request.client else None),
                user_agent=agent[:USER_AGENT_MAX] if agent else None,
            )
        )

    @app.api_route("/c/{token}", methods=["GET", "HEAD"])
    async def click(token: str, request: Request) -> Response:
        ids = signer.read_click_token(token)
        target = await links.target(ids[0]) if ids else None
        if ids is None or target is None:
            raise HTTPException(status_code=404)
        # Link checkers and mail scanners probe with HEAD: they get the redirect, no click.
        if request.method == "GET":
            event(request, "clicks", ids[1], ids[0])
        return RedirectResponse(target, status_code=302, headers=NO_STORE)

    @app.get("/o/{token}")
    async def open_pixel(token: str, request: Request) -> Response:
        delivery_id = signer.read_open_token(token)
        if delivery_id is not None:
            event(request, "opens", delivery_id, None)
        # Always the pixel: a broken image in a reader's mail client helps nobody.
        return Response(PIXEL, media_type="image/gif", headers=NO_STORE)

    @app.get("/u/{token}", response_class=HTMLResponse)
    def unsubscribe_page(token: str) -> HTMLResponse:
        if signer.read_unsubscribe_token(token) is None:
            raise HTTPException(status_code=404)
        return page("unsubscribe.html", token=token, done=False, newsletter=None)

    @app.post("/u/{token}", response_class=HTMLResponse)
    def unsubscribe_now(token: str, session: DB) -> HTMLResponse:
        """RFC 8058 one-click: no login, no cookie, no redirect; effective at once."""
        ids = signer.read_unsubscribe_token(token)
        if ids is None:
            raise HTTPException(status_code=404)
        newsletter = unsubscribe(session, *ids)
        return page("unsubscribe.html", token=token, done=True, newsletter=newsletter)

    @app.get("/healthz")
    def healthz(session: DB) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
