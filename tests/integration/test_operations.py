"""Operations on real parts: health and readiness, /metrics, JSON logs with ids, Celery task
events, a single beat behind a lock, and workers that stop without losing a batch."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, text

from digest.config import load_settings
from digest.db import migrate, session_factory
from digest.models import Delivery, DeliveryState, Subscriber
from digest.sending import delivery_counts
from tests.conftest import RABBITMQ_URL
from tests.support import (
    Service,
    all_final,
    free_port,
    parse_message,
    prepare_sample_edition,
    require_service,
    wait_until,
)

DIGEST = str(Path(sys.executable).parent / "digest")
TOKEN = "metrics-test-token"


def _child_env(env: dict[str, str]) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return {**full, **env}


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# --- health -------------------------------------------------------------------------------


def test_liveness_readiness_and_digest_health(sqlite_settings, web_server, env) -> None:
    base = web_server(sqlite_settings)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    health = subprocess.run([DIGEST, "health"], env=_child_env(env), capture_output=True, text=True)
    assert health.returncode == 0, health.stderr
    assert health.stdout.splitlines() == ["database: ok", "broker: ok"]

    closed = f"127.0.0.1:{free_port()}"
    broken = {
        "broker": {"DIGEST_BROKER_URL": f"amqp://guest:guest@{closed}//"},
        "database": {"DIGEST_DATABASE_URL": f"postgresql+psycopg://digest@{closed}/digest"},
    }
    for dependency, override in broken.items():
        settings = load_settings({**env, **override})
        # Still alive: restarting the process would not bring the dependency back.
        base = web_server(settings)
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"][dependency] == "unavailable"
        assert closed not in ready.text  # why goes to the log, not to the public
        health = subprocess.run(
            [DIGEST, "health"], env=_child_env({**env, **override}), capture_output=True, text=True
        )
        assert health.returncode == 1
        assert f"{dependency}: unavailable" in health.stdout


def test_metrics_need_a_token(sqlite_settings, web_server) -> None:
    base = web_server(sqlite_settings)
    assert httpx.get(f"{base}/metrics").status_code == 503  # no DIGEST_API_TOKENS: disabled
    base = web_server(dataclasses.replace(sqlite_settings, api_tokens=(TOKEN,)))
    assert httpx.get(f"{base}/metrics").status_code == 401
    wrong = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


# --- a real send, watched the way an operator watches it -----------------------------------


class TaskEvents:
    """Celery's event stream (what Flower reads), captured in a thread."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.events: list[dict[str, Any]] = []
        self.connection = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(
            self.connection, handlers={"*": self.events.append}
        )
        self.thread = threading.Thread(target=self.receiver.capture, daemon=True)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()

    def of(self, uuid: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == uuid]

    def uuids(self, task_name: str) -> set[str]:
        return {
            e["uuid"]
            for e in list(self.events)
            if e["type"] == "task-received" and e.get("name") == task_name
        }


@pytest.fixture
def watched_env(env, postgres_url, smtp_sink) -> Iterator[dict[str, str]]:
    require_service("RabbitMQ", RABBITMQ_URL, 5672)
    env.update(
        DIGEST_DATABASE_URL=postgres_url,
        DIGEST_BROKER_URL=RABBITMQ_URL,
        DIGEST_SMTP_URL=smtp_sink.url,
        DIGEST_API_TOKENS=TOKEN,
        DIGEST_LOG_FORMAT="json",
    )
    yield env
    with Celery(broker=RABBITMQ_URL).connection_for_write() as conn:
        conn.default_channel.queue_delete(env["DIGEST_QUEUE"])


def test_a_send_seen_through_metrics_logs_and_events(
    watched_env, smtp_sink, start_worker, web_server
) -> None:
    settings = load_settings(watched_env)
    edition = prepare_sample_edition(settings, 5)
    smtp_sink.replies["reader004@example.org"] = "550 5.1.1 No such mailbox"
    base = web_server(settings)
    before = _metrics(base)
    assert before[("digest_deliveries", (("state", "queued"),))] == 5
    assert before[("digest_up", (("dependency", "broker"),))] == 1
    assert before[("digest_up", (("dependency", "database"),))] == 1

    with TaskEvents(RABBITMQ_URL) as events:
        worker = start_worker(watched_env)
        wait_until(all_final(settings, edition.id, 5), 120, "the edition to be sent")
        sent = _metrics(base)  # within the minute the rate is taken over
        assert sent[("digest_send_rate_per_second", ())] == pytest.approx(4 / 60)
        # Every task the worker runs starts at zero failures, so a first failure is an increase.
        assert sent[("digest_task_failures_total", (("task", "digest.ingest"),))] == 0
        # A task that fails for real (wrong arguments), as a bug in production would.
        broken = Celery(broker=RABBITMQ_URL).send_task(
            "digest.ingest", args=[], queue=watched_env["DIGEST_QUEUE"]
        )
        wait_until(lambda: "task-failed" in events.of(broken.id), 60, "the task-failed event")
        batches = events.uuids("digest.send_batch")
        assert batches and all("task-succeeded" in events.of(uuid) for uuid in batches)

    # One click through the real redirect.
    message = parse_message(smtp_sink.by_recipient()["reader001@example.org"][0].data)
    tracked = next(
        w
        for w in message.get_body(("plain",)).get_content().split()
        if w.startswith(f"{settings.base_url}/c/")
    )
    assert httpx.get(tracked.replace(settings.base_url, base)).status_code == 302

    def clicks_counted() -> bool:
        metrics = _metrics(base)
        return sum(v for (name, _), v in metrics.items() if name == "digest_clicks_total") == 1

    wait_until(clicks_counted, 10, "the click in /metrics")
    after = _metrics(base)
    assert after[("digest_deliveries", (("state", "sent"),))] == 4
    assert after[("digest_deliveries", (("state", "failed"),))] == 1
    assert after[("digest_deliveries", (("state", "queued"),))] == 0
    assert after[("digest_task_failures_total", (("task", "digest.ingest"),))] == 1
    assert after[("digest_task_failures_total", (("task", "digest.tick"),))] == 0
    assert ("digest_task_last_failure_timestamp_seconds", (("task", "digest.ingest"),)) in after
    assert ("digest_queue_depth", (("queue", watched_env["DIGEST_QUEUE"]),)) in after
    assert ("digest_social_posts", (("state", "queued"),)) in after

    # The worker's log: one JSON object per line, and the failed delivery's line names the
    # edition, the delivery and the task it happened in.
    with session_factory(settings.database_url)() as session:
        failed_id = session.scalar(
            select(Delivery.id)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == "reader004@example.org")
        )
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("delivery_id") == failed_id]
    assert failed, worker.output()
    assert failed[0]["edition_id"] == edition.id
    assert failed[0]["task"] == "digest.send_batch"
    assert failed[0]["level"] == "warning"
    assert {"time", "logger", "message", "task_id"} <= failed[0].keys()
    assert any(line["level"] == "error" and "digest.ingest" in line["message"] for line in lines)


# --- graceful shutdown --------------------------------------------------------------------


@pytest.mark.parametrize(
    "remap", [None, "SIGQUIT"], ids=["warm shutdown", "soft shutdown (REMAP_SIGTERM=SIGQUIT)"]
)
def test_sigterm_lets_the_running_batch_finish(env, smtp_sink, start_worker, remap) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    if remap:
        env["REMAP_SIGTERM"] = remap
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 6)  # one batch (DIGEST_BATCH_SIZE is 7)
    smtp_sink.data_delay = 0.5
    worker = start_worker(env)
    wait_until(lambda: len(smtp_sink.messages) >= 1, 60, "the batch to start")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0, worker.output()
    if remap:
        assert "Initiating Soft Shutdown" in worker.output()

    with session_factory(settings.database_url)() as session:
        counts = delivery_counts(session, edition.id)
    assert counts[DeliveryState.SENT] == 6, (counts, worker.output())
    assert {rcpt: len(m) for rcpt, m in smtp_sink.by_recipient().items()} == {
        f"reader00{n}@example.org": 1 for n in range(1, 7)
    }


# --- one beat -----------------------------------------------------------------------------


@pytest.fixture
def start_beat(start_service) -> Callable[[dict[str, str]], Service]:
    return lambda env: start_service([DIGEST, "beat"], env)


ACQUIRED = "beat lock acquired"
STANDING_BY = "standing by"
TICKING = "Sending due task tick"


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_second_beat_stands_by_and_takes_over(request, env, start_beat, database) -> None:
    if database == "postgres":
        env["DIGEST_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    env["DIGEST_TICK_SECONDS"] = "1"
    migrate(load_settings(env).database_url)
    first = start_beat(env)
    wait_until(first.says(TICKING), 30, "the first beat to tick")
    second = start_beat(env)
    wait_until(second.says(STANDING_BY), 30, "the second beat to stand by")
    # Several of the first beat's ticks later, the second still has not ticked.
    ticks = first.output().count(TICKING)
    wait_until(lambda: first.output().count(TICKING) >= ticks + 3, 30, "more ticks")
    assert TICKING not in second.output() and ACQUIRED not in second.output()

    first.proc.kill()  # dies without releasing anything itself (SIGKILL)
    first.proc.wait()
    wait_until(second.says(TICKING), 30, "the second beat to take over")
    assert ACQUIRED in second.output()


def _terminate_the_lock_holder(database_url: str) -> None:
    """Cut the beat lock's connection from the server side, as a network failure would."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        terminated = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l "
                "JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()"
            )
        ).scalar()
    engine.dispose()
    assert terminated == 1


def test_a_beat_that_loses_its_lock_connection_stops(env, postgres_url, start_beat) -> None:
    env["DIGEST_DATABASE_URL"] = postgres_url
    migrate(postgres_url)
    beat = start_beat(env)
    wait_until(beat.says(ACQUIRED), 30, "the beat to take the lock")
    _terminate_the_lock_holder(postgres_url)
    # It cannot know whether a spare took over, so it stops rather than tick beside one, with
    # an error status so that any supervisor restarts it (as a spare).
    assert beat.proc.wait(timeout=30) == 1
    assert "stopping this beat" in beat.output()


def test_a_worker_whose_embedded_beat_loses_the_lock_stops(env, postgres_url, start_worker) -> None:
    env["DIGEST_DATABASE_URL"] = postgres_url
    migrate(postgres_url)
    worker = start_worker(env)  # celery worker --beat
    wait_until(worker.says(ACQUIRED), 60, "the embedded beat to take the lock")
    _terminate_the_lock_holder(postgres_url)
    # Not a worker living on without its beat: it shuts down (a warm shutdown, status 0) for
    # its supervisor to restart (compose: restart unless-stopped).
    assert worker.proc.wait(timeout=60) == 0
    assert "stopping this beat" in worker.output()
