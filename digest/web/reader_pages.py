"""The reader's pages: subscribe (double opt-in), confirm, the preference centre and
unsubscribe. Each page is reached through a signed token (digest.tokens); the token is the
reader's only credential, so no login or cookie is involved and a CSRF token would add
nothing an attacker without the link does not already lack.

Confirming and unsubscribing are POSTs behind a button (the RFC 8058 one-click POST aside):
mail security gateways open every link of a message, and a GET that acted would let them
confirm a sign-up nobody asked for, or unsubscribe a reader who never clicked.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated
from zoneinfo import available_timezones

from fastapi import APIRouter, BackgroundTasks, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.mail import TransportError
from digest.models import Frequency, Newsletter, utcnow
from digest.notices import NoticeSender, send_notice
from digest.subscriptions import (
    InvalidAddress,
    PreferenceError,
    Preferences,
    confirm_subscription,
    current_preferences,
    load_subscription,
    request_subscription,
    unsubscribe,
    update_preferences,
)
from digest.tracking import truncate_ip
from digest.web.deps import DB, app_settings, app_signer, page

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
TIMEZONES = sorted(available_timezones())


def _ip_prefix(request: Request) -> str | None:
    return truncate_ip(request.client.host if request.client else None)


def _newsletter(session: Session, slug: str) -> Newsletter:
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        raise HTTPException(status_code=404)
    return newsletter


@router.get("/subscribe/{slug}", response_class=HTMLResponse)
def subscribe_form(slug: str, session: DB) -> HTMLResponse:
    return page("subscribe.html", newsletter=_newsletter(session, slug), error=None, email="")


@router.post("/subscribe/{slug}", response_class=HTMLResponse)
def subscribe(
    slug: str,
    request: Request,
    session: DB,
    background: BackgroundTasks,
    email: Annotated[str, Form(max_length=320)],
    name: Annotated[str, Form(max_length=200)] = "",
) -> HTMLResponse:
    newsletter = _newsletter(session, slug)
    try:
        signup = request_subscription(
            session, newsletter, email, name=name, ip_prefix=_ip_prefix(request), now=utcnow()
        )
    except InvalidAddress as exc:
        return page("subscribe.html", 400, newsletter=newsletter, error=str(exc), email=email)
    log.info("sign-up for %s: %s", newsletter.slug, signup.reason)
    if signup.confirm_to is not None and signup.subscriber_id is not None:
        token = app_signer(request).confirm_token(signup.subscriber_id, newsletter.id)
        settings = app_settings(request)
        # Sent after the answer, so that neither its time nor a relay failure tells a new
        # address from a known one; a reader who gets nothing can ask again.
        background.add_task(
            _send_confirmation,
            settings,
            NoticeSender(newsletter.name, newsletter.from_address),
            signup.confirm_to,
            f"{settings.base_url}/confirm/{token}",
        )
    # The same answer whatever happened: the form must not tell who is subscribed.
    return page("check_inbox.html", newsletter=newsletter)


def _send_confirmation(
    settings: Settings, sender: NoticeSender, address: str, confirm_url: str
) -> None:
    try:
        send_notice(settings, sender, address, "confirm", {"confirm_url": confirm_url})
    except TransportError:
        log.exception("the confirmation message for a sign-up could not be sent")


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(token: str, request: Request, session: DB) -> HTMLResponse:
    ids = app_signer(request).read_confirm_token(token)
    if ids is None:
        return page("confirm.html", 404, state="invalid", newsletter=None, token=token)
    return page(
        "confirm.html", state="ask", newsletter=session.get(Newsletter, ids[1]), token=token
    )


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm(token: str, request: Request, session: DB) -> HTMLResponse:
    signer = app_signer(request)
    ids = signer.read_confirm_token(token)
    subscription = None
    if ids is not None:
        subscription = confirm_subscription(session, *ids, ip_prefix=_ip_prefix(request))
    if ids is None or subscription is None:
        return page("confirm.html", 404, state="invalid", newsletter=None, token=token)
    return page(
        "confirm.html",
        state="done",
        newsletter=session.get(Newsletter, ids[1]),
        token=token,
        preferences_token=signer.preferences_token(*ids),
    )


def _preferences_page(
    request: Request,
    session: DB,
    token: str,
    status_code: int = 200,
    saved: bool = False,
    error: str | None = None,
) -> HTMLResponse:
    signer = app_signer(request)
    ids = signer.read_preferences_token(token)
    rows = load_subscription(session, *ids) if ids else None
    if ids is None or rows is None:
        raise HTTPException(status_code=404)
    subscriber, subscription, newsletter = rows
    return page(
        "preferences.html",
        status_code,
        token=token,
        newsletter=newsletter,
        active=subscription.active,
        # Asked by the sunset whether they still want it (digest.sunset): saving says yes.
        asked_to_stay=subscription.reengagement_sent_at is not None
        or subscription.sunset_at is not None,
        prefs=current_preferences(subscriber, subscription),
        timezones=TIMEZONES,
        unsubscribe_token=signer.unsubscribe_token(*ids),
        saved=saved,
        error=error,
    )


@router.get("/p/{token}", response_class=HTMLResponse)
def preferences_page(token: str, request: Request, session: DB) -> HTMLResponse:
    return _preferences_page(request, session, token)


@router.post("/p/{token}", response_class=HTMLResponse)
def save_preferences(
    token: str,
    request: Request,
    session: DB,
    frequency: Annotated[Frequency, Form()],
    timezone: Annotated[str, Form(max_length=64)],
    send_hour: Annotated[str, Form(max_length=2)] = "",
    paused_until: Annotated[str, Form(max_length=10)] = "",
    sections: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    ids = app_signer(request).read_preferences_token(token)
    if ids is None or load_subscription(session, *ids) is None:
        raise HTTPException(status_code=404)
    newsletter = session.get_one(Newsletter, ids[1])
    try:
        chosen = Preferences(
            # Every section ticked means every section, including ones added later.
            sections=(
                None
                if not newsletter.sections or set(sections or ()) == set(newsletter.sections)
                else sorted(set(sections or ()))
            ),
            frequency=frequency,
            send_hour=int(send_hour) if send_hour.strip() else None,
            timezone=timezone,
            paused_until=date.fromisoformat(paused_until) if paused_until.strip() else None,
        )
        update_preferences(session, *ids, chosen)
    except (PreferenceError, ValueError) as exc:
        session.rollback()
        return _preferences_page(request, session, token, 400, error=str(exc))
    return _preferences_page(request, session, token, saved=True)


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    if app_signer(request).read_unsubscribe_token(token) is None:
        raise HTTPException(status_code=404)
    return page("unsubscribe.html", token=token, done=False, newsletter=None)


@router.post("/u/{token}", response_class=HTMLResponse)
def unsubscribe_now(token: str, request: Request, session: DB) -> HTMLResponse:
    """RFC 8058 one-click: no login, no cookie, no redirect; effective at once. A token we
    signed for a subscription that is gone still gets 200: the reader's wish is fulfilled."""
    ids = app_signer(request).read_unsubscribe_token(token)
    if ids is None:
        raise HTTPException(status_code=404)
    newsletter = unsubscribe(session, *ids)
    return page("unsubscribe.html", token=token, done=True, newsletter=newsletter)
