"""Recording clicks and opens, and telling people apart from machines.

Each click is stored raw (time, user agent, truncated network) together with the class it got
when recorded, so reads stay cheap and a better classifier can re-run over the raw fields.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Click, ClickKind, Delivery, Link, Open, utcnow

USER_AGENT_MAX = 512
# Mail security gateways fetch every link of a message moments after it arrives; people do not.
SCANNER_WINDOW = timedelta(seconds=30)
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


def classify_click(
    user_agent: str | None, clicked_at: datetime, sent_at: datetime | None
) -> ClickKind:
    """Scanner, bot or human, from what a click carries. Deliberately conservative about
    "human": a click that looks automated in any way is not counted as a reader."""
    agent = (user_agent or "").strip()
    if _SCANNER_AGENTS.search(agent):
        return ClickKind.SCANNER
    if not agent or _BOT_AGENTS.search(agent):
        return ClickKind.BOT
    if sent_at is not None and clicked_at - sent_at < SCANNER_WINDOW:
        return ClickKind.SCANNER
    return ClickKind.HUMAN


def link_target(session: Session, link_id: int) -> str | None:
    """Where a tracked link goes: always from the database, never from the request."""
    return session.scalar(select(Link.url).where(Link.id == link_id))


def record_click(
    session: Session,
    link_id: int,
    delivery_id: int | None,
    ip: str | None,
    user_agent: str | None,
) -> str | None:
    """Record one click and return where it goes, or None if the link does not exist."""
    url = link_target(session, link_id)
    if url is None:
        return None
    delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
    now = utcnow()
    agent = (user_agent or "")[:USER_AGENT_MAX] or None
    session.add(
        Click(
            link_id=link_id,
            # An erased delivery leaves the click counted for the link only.
            delivery_id=delivery.id if delivery else None,
            clicked_at=now,
            ip_prefix=truncate_ip(ip),
            user_agent=agent,
            kind=classify_click(agent, now, delivery.sent_at if delivery else None),
        )
    )
    session.commit()
    return url


def record_open(session: Session, delivery_id: int, ip: str | None, user_agent: str | None) -> None:
    if session.get(Delivery, delivery_id) is None:
        return
    session.add(
        Open(
            delivery_id=delivery_id,
            opened_at=utcnow(),
            ip_prefix=truncate_ip(ip),
            user_agent=(user_agent or "")[:USER_AGENT_MAX] or None,
        )
    )
    session.commit()
