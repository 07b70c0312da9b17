"""Editions on the web: "view in browser" (the reader's own copy, through a signed token), and
the newsletter's public archive with an RSS feed of past editions.

Every page is rendered from the edition's frozen snapshot, so it shows what was sent. The
archive shows each edition as a new reader would have got it, with plain story links and none
of a reader's own links; only editions that went out to someone are listed.
"""

from __future__ import annotations

from datetime import date
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from digest.ledger import RECEIVED, segment_blocks
from digest.models import (
    Delivery,
    Edition,
    Link,
    Newsletter,
    Subscriber,
    Subscription,
)
from digest.render import Frame, environment, render_layout
from digest.selection import Limits, Reader, chosen_sections, personalise
from digest.sending import EditionMailer, Recipient
from digest.web.deps import DB, NO_STORE, app_settings, app_signer

router = APIRouter(include_in_schema=False)

ARCHIVE_PAGE = 60
# Archive pages change only when an edition goes out: a short public cache spares the database.
PUBLIC = {"Cache-Control": "public, max-age=300"}


def _went_out() -> ColumnElement[bool]:
    return exists().where(Delivery.edition_id == Edition.id, Delivery.state.in_(RECEIVED))


def _newsletter(session: Session, slug: str) -> Newsletter:
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        raise HTTPException(status_code=404)
    return newsletter


def _archive_url(request: Request, newsletter: Newsletter, issue: date | None = None) -> str:
    base = f"{app_settings(request).base_url}/archive/{newsletter.slug}"
    return base if issue is None else f"{base}/{issue:%Y-%m-%d}"


@router.get("/v/{token}", response_class=HTMLResponse)
def view_in_browser(token: str, request: Request, session: DB) -> HTMLResponse:
    """The reader's copy: the stories their message carried, with their own links. No open
    is counted: the page is not the message."""
    delivery_id = app_signer(request).read_view_token(token)
    delivery = None if delivery_id is None else session.get(Delivery, delivery_id)
    if delivery is None:
        raise HTTPException(status_code=404)
    edition = session.get_one(Edition, delivery.edition_id)
    sent = (
        None
        if delivery.segment_id is None
        else segment_blocks(session, edition.content["blocks"], delivery.segment_id)
    )
    subscription = session.scalars(
        select(Subscription).where(
            Subscription.subscriber_id == delivery.subscriber_id,
            Subscription.newsletter_id == edition.newsletter_id,
        )
    ).first()
    sections = None if subscription is None else subscription.sections
    reader = Reader(chosen_sections(sections))
    # Not yet sent (or sent before segments were recorded): what the reader would get now.
    blocks = (
        sent
        if sent is not None
        else personalise(edition.content["blocks"], reader, Limits.of(edition.newsletter))
    )
    mailer = EditionMailer(session, app_settings(request), edition)
    recipient = Recipient(
        delivery.id,
        delivery.subscriber_id,
        email="",
        tracking=session.get_one(Subscriber, delivery.subscriber_id).tracking_enabled,
        reader=reader,
    )
    layout = render_layout(Frame.of(edition), blocks, tracked=False)
    html = layout.fill(mailer.urls(recipient)).html
    return HTMLResponse(html, headers={**NO_STORE, "X-Robots-Tag": "noindex"})


def _public_edition(session: Session, newsletter: Newsletter, issue: date) -> Edition:
    edition = session.scalars(
        select(Edition).where(
            Edition.newsletter_id == newsletter.id, Edition.issue_date == issue, _went_out()
        )
    ).first()
    if edition is None:
        raise HTTPException(status_code=404)
    return edition


@router.get("/archive/{slug}", response_class=HTMLResponse)
def archive(slug: str, request: Request, session: DB, before: date | None = None) -> HTMLResponse:
    """Past editions, newest first, ``ARCHIVE_PAGE`` at a time (``?before=`` pages back)."""
    newsletter = _newsletter(session, slug)
    query = select(Edition).where(Edition.newsletter_id == newsletter.id, _went_out())
    if before is not None:
        query = query.where(Edition.issue_date < before)
    editions = session.scalars(
        query.order_by(Edition.issue_date.desc()).limit(ARCHIVE_PAGE + 1)
    ).all()
    body = (
        environment(newsletter.locale)
        .get_template("web/archive.html")
        .render(
            newsletter=newsletter,
            editions=editions[:ARCHIVE_PAGE],
            older=editions[ARCHIVE_PAGE - 1].issue_date if len(editions) > ARCHIVE_PAGE else None,
            archive_url=_archive_url(request, newsletter),
        )
    )
    return HTMLResponse(body, headers=PUBLIC)


@router.get("/archive/{slug}/feed.xml")
def archive_feed(slug: str, request: Request, session: DB) -> Response:
    """RSS 2.0 of the latest editions that went out."""
    newsletter = _newsletter(session, slug)
    editions = session.scalars(
        select(Edition)
        .where(Edition.newsletter_id == newsletter.id, _went_out())
        .order_by(Edition.issue_date.desc())
        .limit(ARCHIVE_PAGE)
    ).all()
    items: list[dict[str, Any]] = [
        {
            "title": edition.subject,
            "link": _archive_url(request, newsletter, edition.issue_date),
            "description": edition.intro or edition.preheader,
            "published": format_datetime(edition.prepared_at),
        }
        for edition in editions
    ]
    body = (
        environment()
        .get_template("web/archive_feed.xml")
        .render(newsletter=newsletter, archive_url=_archive_url(request, newsletter), items=items)
    )
    return Response(body, media_type="application/rss+xml; charset=utf-8", headers=PUBLIC)


@router.get("/archive/{slug}/{issue}", response_class=HTMLResponse)
def archived_edition(slug: str, issue: date, request: Request, session: DB) -> HTMLResponse:
    """An edition as a new reader got it, with OpenGraph tags for link previews."""
    newsletter = _newsletter(session, slug)
    edition = _public_edition(session, newsletter, issue)
    blocks = personalise(edition.content["blocks"], Reader(), Limits.of(newsletter))
    url = _archive_url(request, newsletter, issue)
    meta = [
        ("og:type", "article"),
        ("og:site_name", newsletter.name),
        ("og:title", edition.subject),
        ("og:description", edition.intro or edition.preheader),
        ("og:url", url),
        ("article:published_time", edition.prepared_at.isoformat()),
    ]
    links = dict(
        session.execute(select(Link.id, Link.url).where(Link.edition_id == edition.id)).all()
    )
    layout = render_layout(Frame.of(edition), blocks, tracked=False, personal=False, meta=meta)
    html = layout.fill(lambda slot: links[int(slot.removeprefix("link_"))]).html
    return HTMLResponse(html, headers=PUBLIC)
