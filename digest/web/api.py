"""The JSON API (under /api, in the app's OpenAPI document). Every route needs a bearer token
from DIGEST_API_TOKENS; with none configured the API answers 503, so it is never open by
accident."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from digest.edition_control import (
    EditionStateError,
    EditionStatus,
    cancel,
    edition_status,
    pause,
    resume,
)
from digest.editions import EditionNotFound
from digest.models import utcnow
from digest.stats import (
    EditionReport,
    SocialReport,
    edition_report,
    social_report,
    to_csv,
)
from digest.web.deps import DB, app_settings

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
    or null when their denominator is zero. Bounces and complaints are not processed yet and so
    are absent, not zero.
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
    not sending). `state` is sending, paused, sent or cancelled."""
    return _control(edition_status, session, edition_id)


@router.post("/editions/{edition_id}/pause", responses=_CONTROL_RESPONSES)
def post_edition_pause(edition_id: int, session: DB) -> EditionStatus:
    """No further batch is claimed (one in flight finishes) until resume."""
    return _control(pause, session, edition_id)


@router.post("/editions/{edition_id}/resume", responses=_CONTROL_RESPONSES)
def post_edition_resume(edition_id: int, session: DB) -> EditionStatus:
    """The rest is sent from the next beat tick."""
    return _control(resume, session, edition_id)


@router.post("/editions/{edition_id}/cancel", responses=_CONTROL_RESPONSES)
def post_edition_cancel(edition_id: int, session: DB) -> EditionStatus:
    """Every delivery not yet handed to the relay is cancelled; what is sent stays sent."""
    return _control(cancel, session, edition_id)
