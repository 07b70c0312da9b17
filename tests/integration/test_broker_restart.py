"""The broker restarts in the middle of a send: the worker reconnects and every delivery
reaches the relay exactly once.

RabbitMQ (its application stopped and started again) keeps its queues: unacknowledged tasks
come back. Redis here keeps nothing on disk, so a restart is every connection cut and every
queued and unacknowledged task gone: the database still knows what is left, and the tick takes
the edition up again once nothing has been claimed for DIGEST_STALL_SECONDS."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from digest.config import load_settings
from tests.conftest import RABBITMQ_URL, REDIS_URL
from tests.support import (
    all_final,
    prepare_sample_edition,
    require_service,
    settled_count,
    wait_until,
)

SUBSCRIBERS = 60


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def restartable_rabbitmq() -> Iterator[None]:
    require_service("RabbitMQ", RABBITMQ_URL, 5672)
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        reason = "restarting RabbitMQ needs rabbitmqctl, run as root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI requires it")
        pytest.skip(reason)
    yield
    _rabbitmqctl("start_app")  # whatever happened in the test, the broker is left running


def test_a_broker_restart_mid_send_delivers_everyone_once(
    restartable_rabbitmq, env, postgres_url, smtp_sink, start_worker
) -> None:
    env.update(
        DIGEST_DATABASE_URL=postgres_url,
        DIGEST_BROKER_URL=RABBITMQ_URL,
        DIGEST_SMTP_URL=smtp_sink.url,
        DIGEST_BATCH_SIZE="5",
    )
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, SUBSCRIBERS)
    smtp_sink.data_delay = 0.05  # 12 batches of a quarter second: the restart lands mid-send
    worker = start_worker(env)
    wait_until(lambda: len(smtp_sink.messages) >= 10, 60, "the send to be under way")
    _rabbitmqctl("stop_app")
    time.sleep(3)
    _rabbitmqctl("start_app")

    wait_until(all_final(settings, edition.id, SUBSCRIBERS), 120, "every delivery to be final")
    settled_count(lambda: len(smtp_sink.messages), SUBSCRIBERS, "no message sent twice")
    assert {rcpt: len(m) for rcpt, m in smtp_sink.by_recipient().items()} == {
        f"reader{n:03d}@example.org": 1 for n in range(1, SUBSCRIBERS + 1)
    }, worker.output()


def test_a_redis_restart_that_loses_every_task_still_delivers_everyone_once(
    env, postgres_url, smtp_sink, start_worker
) -> None:
    require_service("Redis", REDIS_URL, 6379)
    env.update(
        DIGEST_DATABASE_URL=postgres_url,
        DIGEST_BROKER_URL=REDIS_URL,
        DIGEST_SMTP_URL=smtp_sink.url,
        DIGEST_BATCH_SIZE="5",
        DIGEST_STALL_SECONDS="5",
    )
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, SUBSCRIBERS)
    smtp_sink.data_delay = 0.05
    worker = start_worker(env)
    wait_until(lambda: len(smtp_sink.messages) >= 10, 60, "the send to be under way")
    # What a restart of a Redis without persistence does, without taking the shared server
    # down: every client connection cut, the test database's queues and unacked tasks gone.
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.client_kill_filter(_type="normal", skipme=True)
    client.close()

    wait_until(all_final(settings, edition.id, SUBSCRIBERS), 120, "every delivery to be final")
    settled_count(lambda: len(smtp_sink.messages), SUBSCRIBERS, "no message sent twice")
    assert {rcpt: len(m) for rcpt, m in smtp_sink.by_recipient().items()} == {
        f"reader{n:03d}@example.org": 1 for n in range(1, SUBSCRIBERS + 1)
    }, worker.output()
