"""The public routes over real HTTP (uvicorn): clicks, probes, the pixel, one-click unsubscribe."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select

from digest.config import Settings
from digest.db import session_factory
from digest.models import Click, Delivery, DeliveryState, Link, Newsletter, Open
from digest.tokens import CLICK, TokenSigner
from tests.support import prepare_sample_edition, settled_count


@pytest.fixture
def site(sqlite_settings: Settings, web_server):
    edition = prepare_sample_edition(sqlite_settings, 2)
    sessions = session_factory(sqlite_settings.database_url)
    with sessions() as session:
        link = session.scalars(select(Link).where(Link.edition_id == edition.id)).first()
        delivery = session.scalars(select(Delivery)).first()
    return (
        web_server(sqlite_settings),
        sessions,
        TokenSigner(sqlite_settings.secret_keys),
        link,
        delivery,
    )


def _count(sessions, model) -> Callable[[], int]:
    def count() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(model))

    return count


def test_head_probe_redirects_without_counting_a_click(site) -> None:
    base, sessions, signer, link, delivery = site
    url = f"{base}/c/{signer.click_token(link.id, delivery.id)}"
    probe = httpx.head(url, follow_redirects=False)
    assert probe.status_code == 302 and probe.headers["location"] == link.url
    settled_count(_count(sessions, Click), 0, "Click rows")
    assert httpx.get(url, follow_redirects=False).headers["location"] == link.url
    settled_count(_count(sessions, Click), 1, "Click rows")


@pytest.mark.parametrize("payload", [[2**70, 1], [True, 1], ["1", 1], [1, 2**70], [-1, 1]])
def test_signed_but_impossible_ids_are_not_found(site, sqlite_settings, payload) -> None:
    base, sessions, *_ = site
    # Signed with the real key, so only the id checks stand between it and the database.
    forged = URLSafeSerializer(list(reversed(sqlite_settings.secret_keys)), salt=CLICK)
    response = httpx.get(f"{base}/c/{forged.dumps(payload)}", follow_redirects=False)
    assert response.status_code == 404
    settled_count(_count(sessions, Click), 0, "Click rows")


def test_open_pixel_records_one_open_and_is_never_cached(site) -> None:
    base, sessions, signer, _, delivery = site
    response = httpx.get(f"{base}/o/{signer.open_token(delivery.id)}")
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    settled_count(_count(sessions, Open), 1, "Open rows")
    # A tampered token still gets the pixel (no broken image), but records nothing.
    assert httpx.get(f"{base}/o/nonsense").status_code == 200
    settled_count(_count(sessions, Open), 1, "Open rows")


def test_one_click_unsubscribe_is_immediate_and_needs_nothing_else(site) -> None:
    base, sessions, signer, _, delivery = site
    with sessions() as session:
        newsletter_id = session.scalar(select(Newsletter.id))
    token = signer.unsubscribe_token(delivery.subscriber_id, newsletter_id)
    # RFC 8058: a POST with this body, no cookies, no redirect to follow.
    response = httpx.post(
        f"{base}/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 200
    with sessions() as session:
        assert session.get_one(Delivery, delivery.id).state == DeliveryState.CANCELLED
    assert httpx.post(f"{base}/u/{token[:-3]}xyz").status_code == 404
