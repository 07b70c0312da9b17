"""The JSON API (under /api, in the app's OpenAPI document). Every route needs a bearer token
from DIGEST_API_TOKENS; with none configured the API answers 503, so it is never open by
accident."""

from __future__ import annotations

import hmac
import io
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from digest.edition_control import (
    EditionStateError,
    EditionStatus,
    cancel,
    edition_status,
    pause,
    resume,
    send,
)
from digest.editions import EditionNotFound, NothingToSend, prepare_edition
from digest.editor_templates import EditorTemplateError
from digest.inbound import handle_inbound
from digest.models import Newsletter, utcnow
from digest.privacy import erase_subscriber, personal_data
from digest.stats import (
    EditionReport,
    SocialReport,
    edition_report,
    social_report,
    to_csv,
)
from digest.subscriber_csv import CsvError, ImportReport, export_chunks, import_subscribers
from digest.subscriptions import InvalidAddress
from digest.web.deps import DB, NO_STORE, app_settings

_bearer = HTTPBearer(auto_error=False)


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    tokens = app_settings(request).api_tokens
    if not tokens:
        raise HTTPException(503, "the API is disabled: set DIGEST_API_TOKENS to enable it")
    given = credentials.credentials.encode() if credentials else b""
    # Compare against every token in constant time, so timing reveals neither token nor match.
    if not any([hmac.compare_digest(given, token.encode()) for token in tokens]):
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])


def _report(session: Session, edition_id: int) -> EditionReport:
    try:
        return edition_report(session, edition_id)
    except EditionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/editions/{edition_id}/stats", responses={404: {"description": "No such edition"}})
def get_edition_stats(edition_id: int, session: DB) -> EditionReport:
    """The edition's summary, then per story (in sending order), per link and per section.

    Human numbers are the headline; machine traffic is reported per kind beside it. "Unique"
    counts distinct deliveries, "total" every recorded event. Rates are fractions (0.25 = 25%)
    or null when their denominator is zero. `bounces` counts deliveries with a hard bounce, a
    soft bounce or a complaint (at SMTP time or reported later).
    """
    return _report(session, edition_id)


@router.get(
    "/editions/{edition_id}/stats.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "Per-story then per-link rows"},
        404: {"description": "No such edition"},
    },
)
def get_edition_stats_csv(edition_id: int, session: DB) -> Response:
    """The same rows as `digest stats EDITION_ID --csv`."""
    return Response(
        to_csv(_report(session, edition_id)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="edition-{edition_id}-stats.csv"'},
    )


@router.get("/social/stats")
def get_social_stats(session: DB) -> SocialReport:
    """Clicks on every social post's tracked link, per post and per account. Human clicks are
    the headline; shared links have no delivery, so "human_networks" (distinct truncated
    networks) approximates how many people clicked."""
    return social_report(session)


def _control(
    action: Callable[[Session, int, datetime], EditionStatus], session: Session, edition_id: int
) -> EditionStatus:
    try:
        return action(session, edition_id, utcnow())
    except EditionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except EditionStateError as exc:
        raise HTTPException(409, str(exc)) from exc


_CONTROL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such edition"},
    409: {"description": "The edition is cancelled or finished"},
}


@router.get("/editions/{edition_id}/status", responses={404: {"description": "No such edition"}})
def get_edition_status(edition_id: int, session: DB) -> EditionStatus:
    """Progress, counts by delivery state, send rate over the last minute and ETA (null when
    not sending). `state` is held, scheduled (all that is left waits for readers' local send
    hour: see `waiting` and `next_local_send_at`), sending, paused, sent or cancelled."""
    return _control(edition_status, session, edition_id)


@router.post("/editions/{edition_id}/pause", responses=_CONTROL_RESPONSES)
def post_edition_pause(edition_id: int, session: DB) -> EditionStatus:
    """No further batch is claimed (one in flight finishes) until resume."""
    return _control(pause, session, edition_id)


@router.post("/editions/{edition_id}/resume", responses=_CONTROL_RESPONSES)
def post_edition_resume(edition_id: int, session: DB) -> EditionStatus:
    """The rest is sent from the next beat tick."""
    return _control(resume, session, edition_id)


@router.post("/editions/{edition_id}/send", responses=_CONTROL_RESPONSES)
def post_edition_send(edition_id: int, session: DB) -> EditionStatus:
    """Send an edition prepared with `hold` from the next beat tick (409 for one paused for
    another reason: resume that)."""
    return _control(send, session, edition_id)


@router.post(
    "/newsletters/{slug}/editions",
    responses={
        404: {"description": "No such newsletter"},
        409: {"description": "No stories"},
        422: {"description": "The newsletter's subject or intro template fails"},
    },
)
def post_newsletter_edition(
    slug: str, session: DB, issue_date: date | None = None, hold: bool = False
) -> EditionStatus:
    """Freeze the newsletter's edition of `issue_date` (default: today, UTC) now; with
    `hold`, it waits for `POST /api/editions/{id}/send`. An existing day's edition is
    returned as it is."""
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        raise HTTPException(404, f"there is no newsletter {slug!r}")
    now = utcnow()
    try:
        edition = prepare_edition(session, newsletter, issue_date or now.date(), now, hold=hold)
    except NothingToSend as exc:
        raise HTTPException(409, str(exc)) from exc
    except EditorTemplateError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _control(edition_status, session, edition.id)


@router.post("/editions/{edition_id}/cancel", responses=_CONTROL_RESPONSES)
def post_edition_cancel(edition_id: int, session: DB) -> EditionStatus:
    """Every delivery not yet handed to the relay is cancelled; what is sent stays sent."""
    return _control(cancel, session, edition_id)


# A bounce or complaint report quotes at most the original message: far below this.
MAX_INBOUND_BYTES = 10 * 1024 * 1024


@router.post(
    "/inbound",
    openapi_extra={
        "requestBody": {"content": {"message/rfc822": {}}, "required": True},
    },
)
async def post_inbound(request: Request) -> dict[str, int]:
    """One raw email message (RFC 5322 bytes) that came back to us: a bounce (DSN), a
    complaint (ARF) or a mailto unsubscribe, for mail services that forward by webhook
    instead of a mailbox. Idempotent: posting the same message again counts nothing twice.
    Returns what the message was, e.g. {"hard": 1}."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_INBOUND_BYTES:
            raise HTTPException(413, f"a message over {MAX_INBOUND_BYTES} bytes is not a report")
    if not body:
        raise HTTPException(400, "the body must be the raw message")
    keys = app_settings(request).secret_keys

    def handle() -> dict[str, int]:
        with request.app.state.sessions() as session:
            return dict(handle_inbound(session, keys, bytes(body)))

    return await run_in_threadpool(handle)


def _held_data(session: Session, email: str) -> dict[str, Any]:
    try:
        data = personal_data(session, email)
    except InvalidAddress as exc:
        raise HTTPException(400, str(exc)) from exc
    if data is None:
        raise HTTPException(404, "we hold no data about this address")
    return data


@router.get("/subscribers/{email}/data", responses={404: {"description": "Nothing held"}})
def get_subscriber_data(email: str, session: DB) -> dict[str, Any]:
    """Everything held about the address (GDPR access and portability): profile,
    subscriptions and preferences, deliveries, opens, clicks, bounces and the consent log."""
    return _held_data(session, email)


@router.delete("/subscribers/{email}", responses={404: {"description": "Nothing held"}})
def delete_subscriber(email: str, session: DB) -> dict[str, str]:
    """Erase the person behind the address (GDPR erasure): personal data removed, counts
    kept, the address suppressed as a hash so no import brings it back."""
    _held_data(session, email)
    if not erase_subscriber(session, email):
        raise HTTPException(404, "there is no subscriber with this address")
    return {"status": "erased"}


# An upload past this is refused (413): ~2.5 million rows, and the spool file stays bounded.
MAX_IMPORT_BYTES = 256 * 1024 * 1024
# The upload is kept in memory up to this, on disk beyond.
_SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_CSV_TYPES = ("text/csv", "application/csv", "text/plain")


def _newsletter(session: Session, slug: str) -> Newsletter:
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        raise HTTPException(404, f"there is no newsletter {slug!r}")
    # End the read transaction, so nothing is held open while an upload comes in; the
    # attributes stay loaded (the app's sessions do not expire on commit).
    session.commit()
    return newsletter


def _import_spooled(
    session: Session, newsletter: Newsletter, body: tempfile.SpooledTemporaryFile[bytes]
) -> ImportReport:
    # Decoded as it is read; bad UTF-8 becomes U+FFFD, which the import reports per row.
    text = io.TextIOWrapper(body, encoding="utf-8", errors="replace", newline="")
    try:
        return import_subscribers(session, newsletter, text, source="api import")
    finally:
        text.detach()  # the spool is closed by its own with block


@router.post(
    "/newsletters/{slug}/subscribers/import",
    responses={
        400: {"description": "Not a list of subscribers (no email column); nothing imported"},
        404: {"description": "No such newsletter"},
        413: {"description": "The file is larger than MAX_IMPORT_BYTES (256 MiB)"},
        415: {"description": "The body is not text/csv"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def post_subscribers_import(slug: str, request: Request, session: DB) -> ImportReport:
    """Subscribe the addresses of a CSV body (UTF-8, header row first) to the newsletter as
    confirmed subscribers: the columns and rules of `digest subscribers import`.

    Bad rows are skipped and reported by line and reason, the good ones go in: the answer is
    200 with the counts whenever the file could be read. `first_errors` lists the first 1,000
    rows reported (invalid or suppressed); `errors + suppressed` says how many there were.
    Rows are committed a thousand at a time, so posting the same file again after a failure
    finishes the job without counting anything twice.
    """
    newsletter = await run_in_threadpool(_newsletter, session, slug)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in _CSV_TYPES:
        raise HTTPException(415, "send the file as the request body, with type text/csv")
    # The body is spooled first (in memory up to 1 MiB, then to disk) and imported once it is
    # all there: memory stays flat, and a slow upload holds no database transaction open.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as body:
        size = 0
        async for piece in request.stream():
            size += len(piece)
            if size > MAX_IMPORT_BYTES:
                raise HTTPException(413, f"the file is larger than {MAX_IMPORT_BYTES:,} bytes")
            body.write(piece)
        body.seek(0)
        try:
            return await run_in_threadpool(_import_spooled, session, newsletter, body)
        except CsvError as exc:
            raise HTTPException(400, str(exc)) from exc


@router.get(
    "/subscribers/export.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per subscription"},
        404: {"description": "No such newsletter"},
    },
)
def get_subscribers_export(
    request: Request, session: DB, newsletter: str | None = None
) -> StreamingResponse:
    """The rows of `digest subscribers export`: one per subscription (of the newsletter whose
    slug is given, or of all), erased subscribers left out, formula-like cells behind an
    apostrophe. Streamed as it is read, whatever the number of rows."""
    chosen = _newsletter(session, newsletter) if newsletter else None
    sessions: sessionmaker[Session] = request.app.state.sessions

    def pieces() -> Iterator[str]:
        # A session of its own: the request's may be closed before the body is all sent.
        with sessions() as export_session:
            yield from export_chunks(export_session, chosen)

    filename = f"subscribers-{chosen.slug if chosen else 'all'}.csv"
    return StreamingResponse(
        pieces(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **NO_STORE},
    )
