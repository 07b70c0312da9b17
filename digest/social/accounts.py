"""Social accounts: connecting one (credentials checked for completeness and sealed), its
posting settings, and the client that speaks for it.

Credentials are decrypted only to build a client, inside a worker, and re-sealed at once when
a client renews them (a Bluesky session); no other code sees them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from digest.models import AccountStatus, SocialAccount
from digest.social.clients.bluesky import BlueskyClient
from digest.social.clients.discord import DiscordClient
from digest.social.clients.facebook import FacebookClient
from digest.social.clients.linkedin import LinkedInClient
from digest.social.clients.mastodon import MastodonClient
from digest.social.clients.slack import SlackClient
from digest.social.clients.telegram import TelegramClient
from digest.social.clients.threads import ThreadsClient
from digest.social.clients.x import XClient
from digest.social.platform import Account, Client, PlatformError
from digest.social.vault import Vault
from digest.subscriptions import check_timezone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformInfo:
    client: type[Client]
    # The public API root; None where every account has its own (a Mastodon instance).
    base_url: str | None
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    # The client sends the story's image itself (others let the platform fetch our OG tags).
    uploads_thumbnail: bool = False


PLATFORMS: dict[str, PlatformInfo] = {
    "mastodon": PlatformInfo(MastodonClient, None, ("access_token",)),
    "bluesky": PlatformInfo(
        BlueskyClient,
        "https://bsky.social",
        ("app_password",),
        ("identifier",),
        uploads_thumbnail=True,
    ),
    "x": PlatformInfo(
        XClient,
        "https://api.x.com",
        ("consumer_key", "consumer_secret", "access_token", "access_token_secret"),
        ("user_id",),
    ),
    "threads": PlatformInfo(
        ThreadsClient, "https://graph.threads.net", ("access_token",), ("user_id",)
    ),
    "telegram": PlatformInfo(TelegramClient, "https://api.telegram.org", ("bot_token", "chat_id")),
    "facebook": PlatformInfo(
        FacebookClient, "https://graph.facebook.com", ("page_id", "access_token")
    ),
    "linkedin": PlatformInfo(
        LinkedInClient, "https://api.linkedin.com", ("organization_id", "access_token")
    ),
    "discord": PlatformInfo(DiscordClient, "https://discord.com", ("webhook_url",)),
    "slack": PlatformInfo(SlackClient, "https://hooks.slack.com", ("webhook_url",)),
}

_SLOT = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class AccountError(ValueError):
    """An account setting or credential is missing or malformed; the message says which."""


class AccountNotFound(AccountError, LookupError):
    """There is no account with this id."""


def parse_slots(text: str) -> tuple[time, ...]:
    """``"08:00, 12:30"`` → sorted local times; AccountError naming a bad entry."""
    slots = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _SLOT.fullmatch(part)
        if match is None:
            raise AccountError(f"posting slot {part!r} is not a time like 08:30 (24-hour clock)")
        slots.add(time(int(match[1]), int(match[2])))
    return tuple(sorted(slots))


def format_slots(slots: tuple[time, ...]) -> str:
    return ",".join(slot.strftime("%H:%M") for slot in slots)


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AccountError(f"base URL {url!r} is not an http(s) URL such as https://example.social")
    return url.rstrip("/")


@dataclass(frozen=True)
class PostingSettings:
    """An account's posting settings, as an editor sets them (None: leave as is)."""

    timezone: str | None = None
    slots: str | None = None
    daily_cap: int | None = None
    approval: bool | None = None
    expiry_minutes: int | None = None
    reshare_days: int | None = None
    utm_campaign: str | None = None
    max_characters: int | None = None


# (lowest, highest) of each number an editor sets: past these a setting is surely a mistake,
# and dates computed from it would leave the calendar.
BOUNDS: dict[str, tuple[int, int]] = {
    "daily_cap": (0, 1000),
    "expiry_minutes": (1, 7 * 24 * 60),
    # 0 switches evergreen re-sharing off.
    "reshare_days": (0, 3650),
    "max_characters": (1, 1_000_000),
}


def _apply(account: SocialAccount, settings: PostingSettings) -> None:
    if settings.timezone is not None:
        try:
            account.timezone = check_timezone(settings.timezone)
        except ValueError as exc:
            raise AccountError(str(exc)) from None
    if settings.slots is not None:
        account.slots = format_slots(parse_slots(settings.slots))
    for name, (low, high) in BOUNDS.items():
        value = getattr(settings, name)
        if value is not None:
            if not low <= value <= high:
                raise AccountError(f"{name.replace('_', ' ')} must be {low} to {high:,}")
            if name == "reshare_days" and value == 0:
                value = None
            setattr(account, name, value)
    if settings.approval is not None:
        account.approval = settings.approval
    if settings.utm_campaign is not None:
        campaign = settings.utm_campaign.strip()
        if not campaign or len(campaign) > 100:
            raise AccountError("the UTM campaign must be 1 to 100 characters")
        account.utm_campaign = campaign


def connect(
    session: Session,
    vault: Vault,
    platform: str,
    handle: str,
    credentials: Mapping[str, str],
    *,
    base_url: str | None = None,
    settings: PostingSettings = PostingSettings(),
    now: datetime,
) -> SocialAccount:
    """Add an account, or replace the credentials of an existing one (a reconnect ends a
    REAUTH stop; a paused account stays paused). Nothing is stored when anything is missing or
    malformed."""
    info = PLATFORMS.get(platform)
    if info is None:
        raise AccountError(f"unknown platform {platform!r}; one of: {', '.join(PLATFORMS)}")
    handle = handle.strip()
    if not handle or len(handle) > 200:
        raise AccountError("the handle must be 1 to 200 characters")
    credentials = {k: v.strip() for k, v in credentials.items() if v and v.strip()}
    missing = [name for name in info.required if name not in credentials]
    if missing:
        raise AccountError(f"{platform} needs the credential(s): {', '.join(missing)}")
    unknown = sorted(set(credentials) - set(info.required) - set(info.optional))
    if unknown:
        raise AccountError(
            f"{platform} takes no credential(s) {', '.join(unknown)}; it takes "
            + ", ".join(info.required + info.optional)
        )
    if base_url is None and info.base_url is None:
        raise AccountError(
            f"{platform} needs --base-url, the server's URL (https://mastodon.social)"
        )
    account = session.scalar(
        select(SocialAccount).where(
            SocialAccount.platform == platform, SocialAccount.handle == handle
        )
    )
    if account is None:
        account = SocialAccount(platform=platform, handle=handle, status=AccountStatus.ACTIVE)
        session.add(account)
    account.base_url = check_base_url(base_url) if base_url else None
    account.credentials = vault.seal(credentials)
    if account.status is not AccountStatus.PAUSED:
        _activate(account, now)
    _apply(account, settings)
    session.flush()
    return account


def _activate(account: SocialAccount, now: datetime) -> None:
    account.status = AccountStatus.ACTIVE
    account.status_reason = None
    account.active_since = now


def update_settings(
    session: Session,
    account_id: int,
    settings: PostingSettings,
    now: datetime,
    *,
    paused: bool | None = None,
) -> SocialAccount:
    """Change the settings given; ``paused`` stops or restarts posting (an account waiting
    for new credentials can only be restarted by connecting it again)."""
    account = load_account(session, account_id)
    _apply(account, settings)
    if paused is not None:
        if account.status is AccountStatus.REAUTH:
            raise AccountError(
                f"account {account.id} needs its credentials again: connect it"
                + (f" ({account.status_reason})" if account.status_reason else "")
            )
        if paused:
            account.status = AccountStatus.PAUSED
        elif account.status is AccountStatus.PAUSED:
            _activate(account, now)
    session.flush()
    return account


def instance_limit(account: SocialAccount, vault: Vault, sessions: sessionmaker[Session]) -> str:
    """Ask a Mastodon instance for its own status length and store it on the account;
    returns what happened, for the editor."""
    client = client_for(account, vault, sessions, timeout=10)
    if not isinstance(client, MastodonClient):
        return ""
    try:
        account.max_characters = client.instance_limits().max_characters
    except PlatformError as exc:
        return f"the instance's length limit is unknown ({exc.message}); 500 is used"
    return f"the instance allows {account.max_characters:,} characters"


def load_account(session: Session, account_id: int) -> SocialAccount:
    account = session.get(SocialAccount, account_id)
    if account is None:
        raise AccountNotFound(f"there is no social account {account_id}")
    return account


def base_url(account: SocialAccount) -> str:
    url = account.base_url or PLATFORMS[account.platform].base_url
    assert url is not None  # connect() refuses an account with neither
    return url


def client_for(
    account: SocialAccount,
    vault: Vault,
    sessions: sessionmaker[Session],
    *,
    timeout: float = 20.0,
) -> Client:
    """The account's client. Credentials a client renews are sealed and stored at once, in
    their own transaction: a session the platform issued must survive a post that fails."""
    account_id = account.id
    stored = account.credentials

    def store(credentials: Mapping[str, Any]) -> None:
        # Only over what this client was built from: credentials an editor entered meanwhile
        # win over a session renewed with the old ones.
        nonlocal stored
        sealed = vault.seal(credentials)
        with sessions() as session:
            result = session.execute(
                update(SocialAccount)
                .where(SocialAccount.id == account_id, SocialAccount.credentials == stored)
                .values(credentials=sealed)
            )
            session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            stored = sealed

    client: Callable[..., Client] = PLATFORMS[account.platform].client
    return client(
        Account(
            handle=account.handle,
            base_url=base_url(account),
            credentials=vault.open(account.credentials),
            on_credentials=store,
        ),
        timeout=timeout,
    )
