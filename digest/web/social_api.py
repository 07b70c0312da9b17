"""The social part of the JSON API: accounts, the queue, previews and posts. Same bearer
token as the rest of /api. Credentials go in and never come out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from digest.models import SocialAccount, utcnow
from digest.social.accounts import (
    BOUNDS,
    AccountError,
    AccountNotFound,
    PostingSettings,
    connect,
    instance_limit,
    update_settings,
)
from digest.social.queue import (
    AccountOutlook,
    Preview,
    QueueEntry,
    QueueError,
    Sharing,
    StoryNotFound,
    approve,
    entries,
    outlook,
    post_now,
    previews,
    skip,
)
from digest.social.vault import Vault
from digest.tokens import MAX_ID
from digest.web.api import require_token
from digest.web.deps import DB, app_settings, app_signer

router = APIRouter(prefix="/api/social", dependencies=[Depends(require_token)])


Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class PostingFields(BaseModel):
    timezone: str | None = None
    slots: str | None = Field(None, description='Local posting times, "08:00,12:30"')
    daily_cap: int | None = Field(None, ge=BOUNDS["daily_cap"][0], le=BOUNDS["daily_cap"][1])
    approval: bool | None = None
    expiry_minutes: int | None = Field(
        None, ge=BOUNDS["expiry_minutes"][0], le=BOUNDS["expiry_minutes"][1]
    )
    reshare_days: int | None = Field(
        None,
        ge=BOUNDS["reshare_days"][0],
        le=BOUNDS["reshare_days"][1],
        description="0 switches re-sharing off",
    )
    utm_campaign: str | None = None
    max_characters: int | None = Field(
        None, ge=BOUNDS["max_characters"][0], le=BOUNDS["max_characters"][1]
    )

    def settings(self) -> PostingSettings:
        return PostingSettings(**self.model_dump(include=set(PostingFields.model_fields)))


class ConnectRequest(PostingFields):
    platform: str
    handle: str
    credentials: dict[str, str]
    base_url: str | None = None


class AccountChange(PostingFields):
    paused: bool | None = None


@dataclass(frozen=True)
class AccountOut:
    id: int
    platform: str
    handle: str
    status: str
    status_reason: str | None
    timezone: str
    slots: str
    daily_cap: int
    approval: bool
    expiry_minutes: int
    reshare_days: int | None
    utm_campaign: str
    max_characters: int | None

    @classmethod
    def of(cls, a: SocialAccount) -> AccountOut:
        return cls(
            a.id,
            a.platform,
            a.handle,
            a.status.value,
            a.status_reason,
            a.timezone,
            a.slots,
            a.daily_cap,
            a.approval,
            a.expiry_minutes,
            a.reshare_days,
            a.utm_campaign,
            a.max_characters,
        )


@dataclass(frozen=True)
class QueueOut:
    accounts: list[AccountOutlook]
    posts: list[QueueEntry]


class PostRequest(BaseModel):
    story_id: Id
    account_id: Id
    again: bool = Field(False, description="Post a story the account has posted before")


class PostIds(BaseModel):
    ids: list[Id] = Field(min_length=1, max_length=500)


@dataclass(frozen=True)
class Changed:
    changed: int


def _sharing(request: Request) -> Sharing:
    # The app's signer, not a new one: it is keyed once per process.
    return Sharing(app_settings(request).base_url, app_signer(request))


@router.get("/accounts")
def get_accounts(session: DB) -> list[AccountOut]:
    return [
        AccountOut.of(a) for a in session.scalars(select(SocialAccount).order_by(SocialAccount.id))
    ]


@router.post("/accounts", status_code=201, responses={422: {"description": "Bad settings"}})
def post_account(body: ConnectRequest, request: Request, session: DB) -> AccountOut:
    """Connect an account (or give an existing one new credentials). The credentials are
    stored encrypted and never returned. A Mastodon account's length limit is asked of its
    instance unless given."""
    vault = Vault(app_settings(request).secret_keys)
    try:
        account = connect(
            session,
            vault,
            body.platform,
            body.handle,
            body.credentials,
            base_url=body.base_url,
            settings=body.settings(),
            now=utcnow(),
        )
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from exc
    if body.max_characters is None:
        instance_limit(account, vault, request.app.state.sessions)
    session.commit()
    return AccountOut.of(account)


@router.patch("/accounts/{account_id}", responses={404: {"description": "No such account"}})
def patch_account(account_id: Id, body: AccountChange, session: DB) -> AccountOut:
    """Change the settings given; `paused` stops or restarts posting (409 for an account
    that needs its credentials again: connect it)."""
    try:
        account = update_settings(
            session, account_id, body.settings(), utcnow(), paused=body.paused
        )
    except AccountNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except AccountError as exc:
        raise HTTPException(409 if body.paused is not None else 422, str(exc)) from exc
    session.commit()
    return AccountOut.of(account)


@router.get("/queue")
def get_queue(
    session: DB, account_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> QueueOut:
    """Per account: state, today's posts against the cap, next slots. Then the posts waiting,
    under way, unknown, or finished in the last two days."""
    now = utcnow()
    return QueueOut(outlook(session, now, account_id), entries(session, now, account_id))


@router.get("/preview/{story_id}", responses={404: {"description": "No such story"}})
def get_preview(story_id: Id, request: Request, session: DB) -> list[Preview]:
    """The story as each connected account (or each platform) would post it, measured."""
    try:
        return previews(session, _sharing(request), story_id)
    except QueueError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post(
    "/posts",
    status_code=202,
    responses={
        404: {"description": "No such story or account"},
        409: {"description": "Already posted, or not possible now"},
    },
)
def post_post(body: PostRequest, request: Request, session: DB) -> QueueEntry:
    """Queue a story on an account for right away (outside slots and the cap); a worker posts
    it at the next tick."""
    now = utcnow()
    try:
        post = post_now(
            session, _sharing(request), body.account_id, body.story_id, now, again=body.again
        )
    except (AccountNotFound, StoryNotFound) as exc:
        raise HTTPException(404, str(exc)) from exc
    except QueueError as exc:
        raise HTTPException(409, str(exc)) from exc
    return next(e for e in entries(session, now, body.account_id) if e.id == post.id)


@router.post("/posts/approve")
def post_approve(body: PostIds, session: DB) -> Changed:
    """Approve posts waiting for an editor; returns how many were waiting."""
    return Changed(approve(session, body.ids, utcnow()))


@router.post("/posts/skip")
def post_skip(body: PostIds, session: DB) -> Changed:
    """Turn down posts that have not gone out; returns how many were still waiting."""
    return Changed(skip(session, body.ids, utcnow()))
