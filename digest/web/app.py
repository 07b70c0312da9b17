"""Public routes: tracked clicks, the open pixel, one-click unsubscribe, health.

Routes translate HTTP into calls on the domain and back; they hold no logic of their own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.render import environment
from digest.subscriptions import unsubscribe
from digest.tokens import TokenSigner
from digest.tracking import link_target, record_click, record_open

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, max-age=0"}


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(_session)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    sessions: sessionmaker[Session] = session_factory(settings.database_url)
    signer = TokenSigner(settings.secret_keys)
    app = FastAPI(title="Newsroom Digest", version="0.1.0")
    app.state.sessions = sessions

    def page(template: str, status_code: int = 200, **context: object) -> HTMLResponse:
        body = environment().get_template(f"web/{template}").render(context)
        return HTMLResponse(body, status_code=status_code, headers=NO_STORE)

    def client(request: Request) -> tuple[str | None, str | None]:
        return (request.client.host if request.client else None), request.headers.get("user-agent")

    @app.api_route("/c/{token}", methods=["GET", "HEAD"])
    def click(token: str, request: Request, session: DB) -> Response:
        ids = signer.read_click_token(token)
        if ids is None:
            raise HTTPException(status_code=404)
        # Link checkers and mail scanners probe with HEAD: they get the redirect, no click.
        if request.method == "HEAD":
            target = link_target(session, ids[0])
        else:
            target = record_click(session, *ids, *client(request))
        if target is None:
            raise HTTPException(status_code=404)
        return RedirectResponse(target, status_code=302, headers=NO_STORE)

    @app.get("/o/{token}")
    def open_pixel(token: str, request: Request, session: DB) -> Response:
        delivery_id = signer.read_open_token(token)
        if delivery_id is not None:
            record_open(session, delivery_id, *client(request))
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
