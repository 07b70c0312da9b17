"""What every route may ask for: the settings, the token signer and a database session, all
held on the app's state by digest.web.app.create_app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.render import environment
from digest.tokens import TokenSigner

NO_STORE = {"Cache-Control": "no-store, max-age=0"}


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_signer(request: Request) -> TokenSigner:
    signer: TokenSigner = request.app.state.signer
    return signer


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(db_session)]


def page(template: str, status_code: int = 200, **context: object) -> HTMLResponse:
    """A page from templates/web, never cached (each carries a reader's signed links)."""
    body = environment().get_template(f"web/{template}").render(context)
    return HTMLResponse(body, status_code=status_code, headers=NO_STORE)
