"""What the product needs of the broker besides Celery itself: its transport options, and its
queue depth for readiness checks and /metrics (asked through kombu, so it works the same on
RabbitMQ, Redis and the embedded SQLAlchemy transport)."""

from __future__ import annotations

from typing import Any

from kombu import Connection

from digest.config import Settings

# A readiness probe must answer in a few seconds even when the broker is away.
CONNECT_TIMEOUT = 3


def transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith(("redis", "rediss")):
        # Redis redelivers unacknowledged messages after this; it must outlast the longest task.
        return {"visibility_timeout": 3600}
    if broker_url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # kombu hands these to create_engine: wait for SQLite's write lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {}


def queue_depth(settings: Settings) -> int:
    """Messages waiting in the product's queue. Raises the transport's connection error when
    the broker cannot be reached; a queue no worker has declared yet holds nothing."""
    with Connection(
        settings.broker_url,
        connect_timeout=CONNECT_TIMEOUT,
        transport_options=transport_options(settings.broker_url),
    ) as connection:
        connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        try:
            declared = connection.default_channel.queue_declare(queue=settings.queue, passive=True)
        except connection.channel_errors:
            return 0
        return int(declared.message_count)
