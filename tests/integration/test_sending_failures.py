"""What a batch does when things break: the worker dies mid-send, the relay is down, one
recipient is unsendable, a reader leaves mid-edition; and claims under real concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from digest import sending
from digest.config import Settings, load_settings
from digest.db import migrate, session_factory
from digest.edition_control import cancel
from digest.editions import prepare_edition
from digest.mail import TransportUnavailable
from digest.models import (
    Delivery,
    DeliveryState,
    Edition,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)
from digest.subscriptions import unsubscribe
from tests.support import (
    free_port,
    prepare_sample_edition,
    seed_sample_site,
    send_until_done,
    wait_until,
)

SUBSCRIBERS = 6


def _prepare(settings: Settings, subscribers: int = SUBSCRIBERS) -> tuple[int, int]:
    edition = prepare_sample_edition(settings, subscribers)
    return edition.newsletter_id, edition.id


def _states(settings: Settings, edition_id: int) -> dict[str, DeliveryState]:
    with session_factory(settings.database_url)() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.state)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.edition_id == edition_id)
        ).all()
    return dict(rows)


@pytest.fixture
def smtp_env(env: dict[str, str], smtp_sink) -> dict[str, str]:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    env["DIGEST_BATCH_SIZE"] = "100"
    return env


@pytest.mark.parametrize(
    "stop",
    [signal.SIGKILL, signal.SIGUSR1],
    # SIGUSR1 raises Celery's SoftTimeLimitExceeded inside the batch, as a task's soft time
    # limit or the end of a soft shutdown does: the batch's cleanup runs, mid-exchange.
    ids=["killed", "interrupted by an exception"],
)
def test_worker_stopped_inside_the_smtp_window(smtp_env, smtp_sink, stop) -> None:
    """Stopped while the relay holds reader003's message and has not answered the final dot:
    that delivery becomes unknown (never resent); every other one is delivered exactly once."""
    settings = load_settings(smtp_env)
    _, edition_id = _prepare(settings)
    smtp_sink.stall_data.add("reader003@example.org")
    child_env = {**os.environ, **smtp_env}
    code = (
        "import signal\n"
        "from celery.exceptions import SoftTimeLimitExceeded\n"
        "from digest.config import load_settings\n"
        "from digest.db import session_factory\n"
        "from digest.sending import send_batch\n"
        "def interrupt(*_):\n"
        "    raise SoftTimeLimitExceeded()\n"
        "signal.signal(signal.SIGUSR1, interrupt)\n"
        "s = load_settings()\n"
        f"send_batch(session_factory(s.database_url), s, {edition_id})\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], env=child_env)
    try:
        wait_until(
            lambda: "reader003@example.org" in smtp_sink.by_recipient(), 60, "reader003's DATA"
        )
    finally:
        worker.send_signal(stop)
        assert worker.wait(timeout=30) != 0
    smtp_sink.stall_data.clear()

    states = _states(settings, edition_id)
    assert states["reader003@example.org"] == DeliveryState.SENDING
    assert [states[f"reader00{n}@example.org"] for n in (1, 2)] == [DeliveryState.SENT] * 2

    # Time passes beyond every lease the dead worker held.
    with session_factory(settings.database_url)() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.lease_until.is_not(None))
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        assert sending.reconcile(session, utcnow()) == {}
    # The rows it claimed but never tried were not marked unknown: they go out now.
    send_until_done(settings, edition_id)

    states = _states(settings, edition_id)
    assert states.pop("reader003@example.org") == DeliveryState.UNKNOWN
    assert set(states.values()) == {DeliveryState.SENT}
    assert {rcpt: len(m) for rcpt, m in smtp_sink.by_recipient().items()} == {
        f"reader00{n}@example.org": 1 for n in range(1, SUBSCRIBERS + 1)
    }


def test_relay_down_charges_nobody(env) -> None:
    env["DIGEST_SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"
    settings = load_settings(env)
    _, edition_id = _prepare(settings)
    with pytest.raises(TransportUnavailable):
        sending.send_batch(session_factory(settings.database_url), settings, edition_id)
    with session_factory(settings.database_url)() as session:
        rows = session.scalars(select(Delivery)).all()
    assert {(r.state, r.attempts, r.lease_until) for r in rows} == {(DeliveryState.QUEUED, 0, None)}


def test_one_unsendable_recipient_fails_alone(smtp_env, smtp_sink) -> None:
    settings = load_settings(smtp_env)
    newsletter_id, edition_id = _prepare(settings)
    with session_factory(settings.database_url)() as session:
        # An address that validation would refuse today but an older import let in.
        poison = session.scalar(
            insert(Subscriber)
            .values(email="josé@example.org", name="", status=SubscriberStatus.ACTIVE,
                    timezone="UTC", tracking_enabled=True, created_at=utcnow())
            .returning(Subscriber.id)
        )  # fmt: skip
        session.execute(
            insert(Subscription).values(
                newsletter_id=newsletter_id, subscriber_id=poison, active=True, created_at=utcnow()
            )
        )
        session.execute(
            insert(Delivery).values(
                edition_id=edition_id, subscriber_id=poison, state=DeliveryState.QUEUED,
                attempts=0, created_at=utcnow(),
            )
        )  # fmt: skip
        session.commit()
    send_until_done(settings, edition_id)
    states = _states(settings, edition_id)
    assert states.pop("josé@example.org") == DeliveryState.FAILED
    assert set(states.values()) == {DeliveryState.SENT}
    assert len(smtp_sink.by_recipient()) == SUBSCRIBERS


def test_rejection_after_the_final_dot_is_not_sent(smtp_env, smtp_sink) -> None:
    settings = load_settings(smtp_env)
    _, edition_id = _prepare(settings)
    smtp_sink.data_replies["reader002@example.org"] = "554 5.7.1 Rejected as spam"
    smtp_sink.data_replies["reader004@example.org"] = "451 4.7.1 Greylisted, try later"
    send_until_done(settings, edition_id)
    states = _states(settings, edition_id)
    assert states["reader002@example.org"] == DeliveryState.FAILED
    assert states["reader004@example.org"] == DeliveryState.DEFERRED
    assert states["reader001@example.org"] == DeliveryState.SENT


def test_unsubscribe_cancels_what_has_not_gone_out(smtp_env, smtp_sink) -> None:
    settings = load_settings(smtp_env)
    newsletter_id, edition_id = _prepare(settings)
    with session_factory(settings.database_url)() as session:
        reader = session.scalar(
            select(Subscriber.id).where(Subscriber.email == "reader002@example.org")
        )
        unsubscribe(session, reader, newsletter_id)
    send_until_done(settings, edition_id)
    assert _states(settings, edition_id)["reader002@example.org"] == DeliveryState.CANCELLED
    assert "reader002@example.org" not in smtp_sink.by_recipient()
    assert len(smtp_sink.by_recipient()) == SUBSCRIBERS - 1


def test_concurrent_claims_on_postgresql_never_overlap(env, postgres_url) -> None:
    env["DIGEST_DATABASE_URL"] = postgres_url
    settings = load_settings(env)
    _, edition_id = _prepare(settings, subscribers=300)
    claims: list[list[int]] = []
    start = threading.Barrier(4)

    def claimer() -> None:
        with session_factory(postgres_url)() as session:
            start.wait()
            while batch := sending.claim_batch(session, edition_id, 7, utcnow()):
                claims.append(batch)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [i for batch in claims for i in batch]
    assert len(claimed) == len(set(claimed)) == 300
    # Each claim is one batch, also on a table PostgreSQL has not analysed yet (a plan that
    # re-ran the LIMIT per row once leased the whole edition to the first claimer).
    assert max(len(batch) for batch in claims) == 7


def test_rows_back_in_the_queue_after_a_cancel_are_not_sent(env, smtp_sink) -> None:
    """A message in flight during the cancel that is then deferred, and a row a failed batch
    gives back, must not go out once the edition is cancelled."""
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    settings = load_settings(env)
    _, edition_id = _prepare(settings)
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        in_flight, released = session.scalars(
            select(Delivery.id).where(Delivery.edition_id == edition_id).limit(2)
        ).all()
        session.execute(
            update(Delivery).where(Delivery.id == in_flight).values(state=DeliveryState.SENDING)
        )
        session.commit()
        cancel(session, edition_id, utcnow())
        # The relay then defers the message in flight; a failed batch releases another row.
        session.execute(
            update(Delivery)
            .where(Delivery.id == in_flight)
            .values(state=DeliveryState.DEFERRED, next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        session.execute(
            update(Delivery).where(Delivery.id == released).values(state=DeliveryState.QUEUED)
        )
        session.commit()
        assert not sending.has_claimable(session, edition_id, utcnow())
        assert sending.reconcile(session, utcnow()) == {}
    assert sending.send_batch(sessions, settings, edition_id) == {}
    assert smtp_sink.messages == []
    assert set(_states(settings, edition_id).values()) == {DeliveryState.CANCELLED}


def test_a_batch_out_of_time_hands_the_rest_back(env, smtp_sink, monkeypatch) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    settings = load_settings(env)
    _, edition_id = _prepare(settings)  # one batch of 6 (DIGEST_BATCH_SIZE is 7)
    smtp_sink.data_delay = 0.2
    monkeypatch.setattr(sending, "MAX_BATCH_SECONDS", 0.3)
    first = sending.send_batch(session_factory(settings.database_url), settings, edition_id)
    assert 1 <= first[DeliveryState.SENT] < SUBSCRIBERS
    states = _states(settings, edition_id)
    assert sorted(set(states.values())) == [DeliveryState.QUEUED, DeliveryState.SENT]
    send_until_done(settings, edition_id)
    assert {rcpt: len(m) for rcpt, m in smtp_sink.by_recipient().items()} == {
        f"reader00{n}@example.org": 1 for n in range(1, SUBSCRIBERS + 1)
    }


def test_two_ticks_preparing_the_same_edition_on_postgresql(env, postgres_url) -> None:
    env["DIGEST_DATABASE_URL"] = postgres_url
    settings = load_settings(env)
    migrate(postgres_url)
    newsletter_id = seed_sample_site(settings, 50)
    results: list[int] = []
    start = threading.Barrier(2)

    def tick() -> None:
        with session_factory(postgres_url)() as session:
            newsletter = session.get_one(Newsletter, newsletter_id)
            now = utcnow()
            start.wait()
            results.append(prepare_edition(session, newsletter, now.date(), now).id)

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    with session_factory(postgres_url)() as session:
        assert session.scalar(select(func.count()).select_from(Edition)) == 1
        assert session.scalar(select(func.count()).select_from(Delivery)) == 50


def test_a_relay_that_is_down_fails_over_to_the_next(env, smtp_sink, caplog) -> None:
    down = f"127.0.0.1:{free_port()}"
    env["DIGEST_SMTP_URL"] = f"smtp://{down}, {smtp_sink.url}"
    settings = load_settings(env)
    _, edition_id = _prepare(settings)
    send_until_done(settings, edition_id)
    assert set(_states(settings, edition_id).values()) == {DeliveryState.SENT}
    assert len(smtp_sink.messages) == SUBSCRIBERS
    assert f"relay {down} failed" in caplog.text


def test_every_relay_down_charges_nobody_and_names_them_all(env) -> None:
    relays = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env["DIGEST_SMTP_URL"] = ",".join(f"smtp://{relay}" for relay in relays)
    settings = load_settings(env)
    _, edition_id = _prepare(settings)
    with pytest.raises(TransportUnavailable) as raised:
        sending.send_batch(session_factory(settings.database_url), settings, edition_id)
    assert all(relay in str(raised.value) for relay in relays)
    assert set(_states(settings, edition_id).values()) == {DeliveryState.QUEUED}


def test_a_success_waiting_for_its_commit_survives_a_failed_statement(
    env, postgres_url, smtp_sink, monkeypatch
) -> None:
    # On PostgreSQL a success is committed with the next message's start. Here that start
    # fails inside the database (the transaction is aborted): the first message, which the
    # relay accepted, is still recorded as sent, and the second goes back to the queue.
    env.update(DIGEST_DATABASE_URL=postgres_url, DIGEST_SMTP_URL=smtp_sink.url)
    settings = load_settings(env)
    _, edition_id = _prepare(settings, 2)
    real_begin = sending._Records.begin
    calls = []

    def failing_second_begin(records, delivery_id, *args, **kwargs):
        calls.append(delivery_id)
        if len(calls) == 2:
            records.session.execute(text("SELECT 1 / 0"))  # aborts the transaction
        return real_begin(records, delivery_id, *args, **kwargs)

    monkeypatch.setattr(sending._Records, "begin", failing_second_begin)
    with pytest.raises(DBAPIError):
        sending.send_batch(session_factory(settings.database_url), settings, edition_id)
    states = _states(settings, edition_id)
    assert sorted(states.values()) == [DeliveryState.QUEUED, DeliveryState.SENT], states
    assert len(smtp_sink.messages) == 1


def test_a_database_error_building_the_next_message_ahead_loses_no_outcome(
    env, postgres_url, smtp_sink, monkeypatch
) -> None:
    # The next reader's message is built while the relay decides on the current one. Here that
    # build aborts the transaction: the current message's success (held for the next commit)
    # is still recorded, the error stops the batch in the next reader's turn, and the rest go
    # back to the queue.
    env.update(DIGEST_DATABASE_URL=postgres_url, DIGEST_SMTP_URL=smtp_sink.url)
    settings = load_settings(env)
    _, edition_id = _prepare(settings, 4)
    real_message = sending.EditionMailer.message
    built = []

    def failing_third(mailer, recipient, now):
        built.append(recipient.delivery_id)
        if len(built) == 3:
            mailer.session.execute(text("SELECT 1 / 0"))  # aborts the transaction
        return real_message(mailer, recipient, now)

    monkeypatch.setattr(sending.EditionMailer, "message", failing_third)
    with pytest.raises(DBAPIError):
        sending.send_batch(session_factory(settings.database_url), settings, edition_id)
    states = _states(settings, edition_id)
    assert sorted(states.values()) == [DeliveryState.QUEUED] * 2 + [DeliveryState.SENT] * 2
    assert len(smtp_sink.messages) == 2
