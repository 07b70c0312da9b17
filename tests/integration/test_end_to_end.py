"""The whole path on real parts: feeds → edition → a real Celery worker on each broker → a real
SMTP server → a tracked link followed through the real web server."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from kombu import Connection
from sqlalchemy import func, select

from digest.config import load_settings
from digest.db import session_factory
from digest.models import FINAL_DELIVERY_STATES, Click, DeliveryState, Link
from digest.sending import delivery_counts
from tests.conftest import RABBITMQ_URL, REDIS_URL
from tests.support import (
    parse_message,
    prepare_sample_edition,
    require_service,
    settled_count,
    wait_until,
)

SUBSCRIBERS = 20

# broker name → (broker URL or None for the embedded default, database: "sqlite" | "postgres")
BROKERS = {
    "embedded": (None, "sqlite"),
    "redis": (REDIS_URL, "postgres"),
    "rabbitmq": (RABBITMQ_URL, "postgres"),
}


@pytest.fixture(params=list(BROKERS))
def stack_env(request, env: dict[str, str], smtp_sink) -> dict[str, str]:
    broker_url, database = BROKERS[request.param]
    if broker_url is not None:
        require_service(request.param, broker_url, 6379 if request.param == "redis" else 5672)
        env["DIGEST_BROKER_URL"] = broker_url
        request.addfinalizer(lambda: _delete_queue(broker_url, env["DIGEST_QUEUE"]))
    if database == "postgres":
        env["DIGEST_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    return env


def _delete_queue(broker_url: str, queue: str) -> None:
    with Connection(broker_url) as conn:
        conn.default_channel.queue_delete(queue)


def test_digest_goes_out_once_per_subscriber_and_links_are_tracked(
    stack_env, smtp_sink, start_worker, web_server
) -> None:
    settings = load_settings(stack_env)
    sessions = session_factory(settings.database_url)
    edition = prepare_sample_edition(settings, SUBSCRIBERS)

    worker = start_worker(stack_env)

    def all_final() -> bool:
        assert worker.proc.poll() is None, worker.output()
        with sessions() as session:
            counts = delivery_counts(session, edition.id)
        return sum(counts[s] for s in FINAL_DELIVERY_STATES) == SUBSCRIBERS

    wait_until(all_final, 120, "every delivery to reach a final state")
    with sessions() as session:
        assert delivery_counts(session, edition.id)[DeliveryState.SENT] == SUBSCRIBERS

    received = smtp_sink.by_recipient()
    assert sorted(received) == [f"reader{n:03d}@example.org" for n in range(1, SUBSCRIBERS + 1)]
    assert all(len(messages) == 1 for messages in received.values())
    parsed = [parse_message(messages[0].data) for messages in received.values()]
    message_ids = Counter(m["Message-ID"] for m in parsed)
    assert len(message_ids) == SUBSCRIBERS
    for message in parsed:
        assert message.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        assert message["Date"] is not None
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Follow the first tracked link of one message through the real web server.
    text = parsed[0].get_body(("plain",)).get_content()
    tracked = next(w for w in text.split() if w.startswith(f"{settings.base_url}/c/"))
    base = web_server(settings)
    local = tracked.replace(settings.base_url, base)
    response = httpx.get(local, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["cache-control"].startswith("no-store")

    def clicks() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(Click))

    settled_count(clicks, 1, "the click to be stored")
    with sessions() as session:
        link_url = session.scalar(select(Link.url).join(Click, Click.link_id == Link.id))
    assert response.headers["location"] == link_url
    assert link_url.startswith("https://news.example.com/")

    tampered = local[:-2] + ("AA" if not local.endswith("AA") else "BB")
    assert httpx.get(tampered, follow_redirects=False).status_code == 404
    settled_count(clicks, 1, "no click for a tampered token")
