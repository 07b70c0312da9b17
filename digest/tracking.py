"""Telling people apart from machines in clicks and opens, and keeping no more than needed.

Each event is stored raw (time, user agent, truncated network) together with the class it got
when stored (digest.event_journal), so reads stay cheap and a better classifier can re-run over
the raw fields.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from digest.models import Click, ClickKind, Link, Open, OpenKind

USER_AGENT_MAX = 512
# Mail security gateways fetch every link of a message moments after it arrives; people do not.
SCANNER_WINDOW = timedelta(seconds=30)
APPLE_PROXIES = ipaddress.ip_network("17.0.0.0/8")
_SCANNER_AGENTS = re.compile(
    r"barracuda|mimecast|proofpoint|safelinks|microsoft office protection|"
    r"forcepoint|trendmicro|symantec|messagelabs|fortiguard|cisco|ironport|sophos",
    re.IGNORECASE,
)
_BOT_AGENTS = re.compile(
    r"bot\b|crawler|spider|preview|curl/|wget/|python-|httpx|go-http-client|java/|okhttp|"
    r"headless|facebookexternalhit|slack|discord|whatsapp|telegram|^mozilla/4\.0 \(compatible;\)$",
    re.IGNORECASE,
)
# Link-preview crawlers: a platform fetches a shared link to draw its card, and gets the story's
# card page (digest.web.link_previews) instead of the redirect. Each alternative is the
# crawler's own token, never just the platform's name: an in-app browser ("Twitter for iPhone",
# "LinkedInApp", "Telegram-Android") is a person following the link. WhatsApp's crawler is
# "WhatsApp/2.x A"; Mastodon's is "http.rb/5.x (Mastodon/4.x; +https://instance/)".
_PREVIEW_AGENTS = re.compile(
    r"twitterbot|facebookexternalhit|facebot|linkedinbot|slackbot-linkexpanding|discordbot|"
    r"telegrambot|^whatsapp/|\(mastodon/|cardyb|iframely|embedly",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)
def builds_link_preview(agent: str) -> bool:
    """Whether this user agent is a platform fetching a link to build its preview card.
    Memoised: asked on every click, and a newsletter's clicks come from few distinct agents."""
    return _PREVIEW_AGENTS.search(agent) is not None


def truncate_ip(ip: str | None) -> str | None:
    """Keep the network, drop the host: /24 for IPv4, /48 for IPv6."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@functools.lru_cache(maxsize=4096)
def _automated(agent: str) -> ClickKind | None:
    """What a user agent alone says: a scanner, a bot, or (None) a browser. Memoised: a
    newsletter's clicks come from a few hundred distinct agents, and the patterns are the
    costliest step of storing an event."""
    if _SCANNER_AGENTS.search(agent):
        return ClickKind.SCANNER
    if not agent or _BOT_AGENTS.search(agent) or builds_link_preview(agent):
        return ClickKind.BOT
    return None


def classify_click(
    user_agent: str | None, clicked_at: datetime, sent_at: datetime | None
) -> ClickKind:
    """Scanner, bot or human, from what a click carries. Deliberately conservative about
    "human": a click that looks automated in any way is not counted as a reader."""
    automated = _automated((user_agent or "").strip())
    if automated is not None:
        return automated
    if sent_at is not None and clicked_at - sent_at < SCANNER_WINDOW:
        return ClickKind.SCANNER
    return ClickKind.HUMAN


def classify_open(
    user_agent: str | None, ip_prefix: str | None, opened_at: datetime, sent_at: datetime | None
) -> OpenKind:
    """Apple Mail Privacy Protection fetches every image of every message through Apple's
    proxies (17.0.0.0/8) with a bare "Mozilla/5.0" user agent, read or not: such an open says
    nothing about a reader and is counted apart."""
    agent = (user_agent or "").strip()
    automated = _automated(agent)
    if automated == ClickKind.SCANNER:
        return OpenKind.SCANNER
    if agent == "Mozilla/5.0" or _in_apple_proxy_range(ip_prefix):
        return OpenKind.PREFETCH
    if automated == ClickKind.BOT:
        return OpenKind.BOT
    if sent_at is not None and opened_at - sent_at < SCANNER_WINDOW:
        return OpenKind.SCANNER
    return OpenKind.HUMAN


def _in_apple_proxy_range(ip_prefix: str | None) -> bool:
    if not ip_prefix:
        return False
    try:
        return ipaddress.ip_network(ip_prefix).subnet_of(APPLE_PROXIES)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


def purge_personal_data(session: Session, before: datetime) -> int:
    """Strip the network and user agent from events older than the retention window. The
    events and their classes stay, so past editions keep their numbers."""
    purged = 0
    for model, at in ((Click, Click.clicked_at), (Open, Open.opened_at)):
        purged += session.execute(
            update(model)
            .where(at < before, or_(model.ip_prefix.is_not(None), model.user_agent.is_not(None)))
            .values(ip_prefix=None, user_agent=None)
            .execution_options(synchronize_session=False)
        ).rowcount
    session.commit()
    return purged


def link_target(session: Session, link_id: int) -> str | None:
    """Where a tracked link goes: always from the database, never from the request."""
    return session.scalar(select(Link.url).where(Link.id == link_id))


def with_utm(url: str, source: str, medium: str, campaign: str) -> str:
    """Add UTM parameters once, when the link row is created; the site's own are kept."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    for key, value in (("utm_source", source), ("utm_medium", medium), ("utm_campaign", campaign)):
        if key not in present:
            query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query)))
