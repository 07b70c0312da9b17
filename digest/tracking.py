"""Recording clicks and opens. Raw events only; classifying people apart from machines is done
on read, so a better classifier can be applied to past events too."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Click, Delivery, Link, Open, utcnow

USER_AGENT_MAX = 512


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
    if delivery_id is not None and session.get(Delivery, delivery_id) is None:
        delivery_id = None  # the delivery was erased; the click still counts for the link
    session.add(
        Click(
            link_id=link_id,
            delivery_id=delivery_id,
            clicked_at=utcnow(),
            ip_prefix=truncate_ip(ip),
            user_agent=(user_agent or "")[:USER_AGENT_MAX] or None,
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
