"""The social part of the JSON API: accounts, the queue, previews and posts. Same bearer
token as the rest of /api. Credentials go in and never come out."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from digest.models import AccountStatus, SocialAccount, utcnow
from digest.social.accounts import (
    AccountError,
    AccountNotFound,
    PostingSettings,
    connect,
    update_settings,
)
from digest.social.queue import (
    AccountOutlook,
    Preview,
    QueueEntry,
    QueueError,
    Sharing,
    approve,
    entries,
    outlook,
    post_now,
    previews,
    skip,
)
from digest.social.vault import Vault
from digest.web.api import require_token
from digest.web.deps import DB, app_settings, app_signer

router = APIRouter(prefix="/api/social", dependencies=[Depends(require_token)])


class PostingFields(BaseModel):
    timezone: str | None = None
    slots: str | None = Field(None, description='Local posting times, "08:00,12:30"')
    daily_cap: int | None = None
    approval: bool | None = None
    expiry_minutes: int | None = None
    reshare_days: int | None = Field(None, description="0 switches re-sharing off")
    utm_campaign: str | None = None
    max_characters: int | None = None

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
    story_id: int
    account_id: int
    again: bool = Field(False, description="Post a story the account has posted before")


class PostIds(BaseModel):
    ids: list[int] = Field(min_length=1)


@dataclass(frozen=True)
class Changed:
    changed: int


def _sharing(request: Request) -> Sharing:
    return Sharing(app_settings(request).base_url, app_signer(request))


@router.get("/accounts")
def get_accounts(session: DB) -> list[AccountOut]:
    return [
        AccountOut.of(a) for a in session.scalars(select(SocialAccount).order_by(SocialAccount.id))
    ]


@router.post("/accounts", status_code=201, responses={422: {"description": "Bad settings"}})
def post_account(body: ConnectRequest, request: Request, session: DB) -> AccountOut:
    """Connect an account (or give an existing one new credentials). The credentials are
    stored encrypted and never returned."""
    try:
        account = connect(
            session,
            Vault(app_settings(request).secret_keys),
            body.platform,
            body.handle,
            body.credentials,
            base_url=body.base_url,
            settings=body.settings(),
        )
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from exc
    session.commit()
    return AccountOut.of(account)


@router.patch("/accounts/{account_id}", responses={404: {"description": "No such account"}})
def patch_account(account_id: int, body: AccountChange, session: DB) -> AccountOut:
    try:
        account = update_settings(session, account_id, body.settings())
    except AccountNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from exc
    if body.paused is not None:
        if account.status is AccountStatus.REAUTH:
            raise HTTPException(409, "the account needs its credentials again: connect it")
        account.status = AccountStatus.PAUSED if body.paused else AccountStatus.ACTIVE
    session.commit()
    return AccountOut.of(account)


@router.get("/queue")
def get_queue(session: DB, account_id: int | None = None) -> QueueOut:
    """Per account: state, today's posts against the cap, next slots. Then the posts waiting,
    under way, unknown, or finished in the last two days."""
    now = utcnow()
    return QueueOut(outlook(session, now, account_id), entries(session, now, account_id))


@router.get("/preview/{story_id}", responses={404: {"description": "No such story"}})
def get_preview(story_id: int, request: Request, session: DB) -> list[Preview]:
    """The story as each connected account (or each platform) would post it, measured."""
    try:
        return previews(session, _sharing(request), story_id)
    except QueueError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/posts", status_code=202, responses={409: {"description": "Already posted"}})
def post_post(body: PostRequest, request: Request, session: DB) -> QueueEntry:
    """Queue a story on an account for right away (outside slots and the cap); a worker posts
    it at the next tick."""
    now = utcnow()
    try:
        post = post_now(
            session, _sharing(request), body.account_id, body.story_id, now, again=body.again
        )
    except AccountNotFound as exc:
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
