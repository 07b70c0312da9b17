"""An edition in flight: status, pause, resume and cancel, from the CLI, the API and a real
worker's point of view."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from digest import sending
from digest.cli import main
from digest.config import Settings, load_settings
from digest.db import session_factory
from digest.edition_control import EditionStateError, cancel, edition_status, pause, resume
from digest.editions import EditionNotFound
from digest.models import Delivery, DeliveryState, Edition, Newsletter, utcnow
from tests.support import prepare_sample_edition, seed_sample_site, send_until_done, wait_until

TOKEN = "control-test-token"


def _sessions(settings: Settings):
    return session_factory(settings.database_url)


def test_pause_stops_claims_resume_restarts_cancel_keeps_what_is_sent(sqlite_settings) -> None:
    settings = sqlite_settings  # DIGEST_BATCH_SIZE is 7
    edition = prepare_sample_edition(settings, 20)
    sessions = _sessions(settings)
    with sessions() as session:
        status = edition_status(session, edition.id, utcnow())
        assert (status.state, status.total, status.done, status.eta_seconds) == (
            "sending", 20, 0, None,
        )  # fmt: skip
        pause(session, edition.id, utcnow())
        assert pause(session, edition.id, utcnow()).state == "paused"  # twice: no change
        assert sending.editions_to_dispatch(session, utcnow(), 7) == {}
        assert not sending.has_claimable(session, edition.id, utcnow())
    assert sending.send_batch(sessions, settings, edition.id) == {}

    with sessions() as session:
        assert resume(session, edition.id, utcnow()).state == "sending"
        # Dispatched afresh: one task per batch left, not the stall-recovery handful.
        assert sending.editions_to_dispatch(session, utcnow(), 7)[edition.id].tasks == 3
    assert sum(sending.send_batch(sessions, settings, edition.id).values()) == 7

    with sessions() as session:
        status = cancel(session, edition.id, utcnow())
        assert status.state == "cancelled"
        assert (status.counts["sent"], status.counts["cancelled"], status.done) == (7, 13, 20)
        assert status.rate_per_second == pytest.approx(7 / 60)
        assert cancel(session, edition.id, utcnow()).counts == status.counts  # idempotent
        for action in (pause, resume):
            with pytest.raises(EditionStateError, match="was cancelled"):
                action(session, edition.id, utcnow())
        with pytest.raises(EditionNotFound):
            edition_status(session, edition.id + 1, utcnow())
    assert sending.send_batch(sessions, settings, edition.id) == {}


def test_a_finished_edition_cannot_be_paused_or_cancelled(sqlite_settings) -> None:
    edition = prepare_sample_edition(sqlite_settings, 3)
    send_until_done(sqlite_settings, edition.id)
    with _sessions(sqlite_settings)() as session:
        assert edition_status(session, edition.id, utcnow()).state == "sent"
        for action in (pause, cancel):
            with pytest.raises(EditionStateError, match="is finished"):
                action(session, edition.id, utcnow())
        assert session.get_one(Edition, edition.id).cancelled_at is None


def test_cli_reports_progress_and_refuses_clearly(env, sqlite_settings, monkeypatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    edition = prepare_sample_edition(sqlite_settings, 10)
    runner = CliRunner()
    paused = runner.invoke(main, ["editions", "pause", str(edition.id)])
    assert paused.exit_code == 0, paused.output
    assert f"edition {edition.id} (" in paused.output and "): paused" in paused.output
    status = runner.invoke(main, ["editions", "status", str(edition.id), "--watch"])
    assert status.exit_code == 0  # --watch returns at once: nothing is being sent
    assert "progress 0/10 (0%)  queued 10" in status.output and "ETA -" in status.output
    cancelled = runner.invoke(main, ["editions", "cancel", str(edition.id)])
    assert "cancelled 10" in cancelled.output
    refused = runner.invoke(main, ["editions", "resume", str(edition.id)])
    assert refused.exit_code == 1
    assert f"edition {edition.id} was cancelled: it cannot be resumed" in refused.output
    missing = runner.invoke(main, ["editions", "status", "999"])
    assert missing.exit_code == 1 and "there is no edition 999" in missing.output


def test_pause_and_resume_a_real_send_through_the_api(
    env, smtp_sink, start_worker, web_server
) -> None:
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_API_TOKENS=TOKEN, DIGEST_TICK_SECONDS="1")
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 30)  # 5 batches of 7 (the last of 2)
    smtp_sink.data_delay = 0.1
    base = web_server(settings) + "/api"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})
    assert httpx.post(f"{base}/editions/{edition.id}/pause").status_code == 401
    assert api.get("/editions/999/status").status_code == 404

    worker = start_worker(env)
    wait_until(lambda: len(smtp_sink.messages) >= 1, 60, "the first message")
    paused = api.post(f"/editions/{edition.id}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    # What was claimed before the pause finishes (at most one batch per pool process);
    # then nothing more goes out.
    time.sleep(3)
    after_pause = len(smtp_sink.messages)
    time.sleep(4)
    assert len(smtp_sink.messages) == after_pause < 30
    assert after_pause <= 7 * 3, worker.output()

    resumed = api.post(f"/editions/{edition.id}/resume").json()
    assert resumed["state"] == "sending"

    def finished() -> bool:
        return api.get(f"/editions/{edition.id}/status").json()["state"] == "sent"

    wait_until(finished, 60, "the rest of the edition")
    status = api.get(f"/editions/{edition.id}/status").json()
    assert (status["done"], status["total"], status["counts"]["sent"]) == (30, 30, 30)
    assert {r: len(m) for r, m in smtp_sink.by_recipient().items()} == {
        f"reader{n:03d}@example.org": 1 for n in range(1, 31)
    }
    conflict = api.post(f"/editions/{edition.id}/cancel")
    assert conflict.status_code == 409 and "is finished" in conflict.json()["detail"]


def test_status_fields_in_the_api(env, web_server) -> None:
    env["DIGEST_API_TOKENS"] = TOKEN
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 4)
    base = web_server(dataclasses.replace(settings, api_tokens=(TOKEN,)))
    status = httpx.get(
        f"{base}/api/editions/{edition.id}/status", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert status["state"] == "sending" and status["eta_seconds"] is None
    assert set(status) >= {"edition_id", "subject", "total", "done", "counts", "rate_per_second"}
    assert status["counts"]["queued"] == 4


def test_a_batch_that_mostly_fails_pauses_its_edition(env, smtp_sink) -> None:
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_BATCH_SIZE="25")
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 40)
    for n in range(1, 14):  # 13 of the first batch's 25 refused for now
        smtp_sink.replies[f"reader{n:03d}@example.org"] = "451 4.7.1 Try again later"
    sessions = _sessions(settings)
    outcomes = sending.send_batch(sessions, settings, edition.id)
    assert sum(outcomes.values()) == 25
    with sessions() as session:
        status = edition_status(session, edition.id, utcnow())
    assert status.state == "paused"
    assert status.pause_reason == (
        "too many errors: 13 of 25 in one batch did not go out (13 deferred, 12 sent)"
    )
    # Nothing more goes out until someone has looked and resumed.
    assert sending.send_batch(sessions, settings, edition.id) == {}
    smtp_sink.replies.clear()
    with sessions() as session:
        resume(session, edition.id, utcnow())
    assert sending.send_batch(sessions, settings, edition.id)[DeliveryState.SENT] == 15


def test_a_batch_under_the_threshold_goes_on(env, smtp_sink) -> None:
    env.update(DIGEST_SMTP_URL=smtp_sink.url, DIGEST_BATCH_SIZE="25")
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 25)
    for n in range(1, 13):  # 12 of 25: under half
        smtp_sink.replies[f"reader{n:03d}@example.org"] = "550 5.1.1 No such user"
    sending.send_batch(_sessions(settings), settings, edition.id)
    with _sessions(settings)() as session:
        assert edition_status(session, edition.id, utcnow()).state == "sent"


def test_prepare_held_then_send_through_the_api(env, web_server) -> None:
    env["DIGEST_API_TOKENS"] = TOKEN
    settings = load_settings(env)
    seed_sample_site(settings, 2)
    base = web_server(settings)
    api = httpx.Client(base_url=f"{base}/api", headers={"Authorization": f"Bearer {TOKEN}"})
    held = api.post("/newsletters/daily/editions", params={"hold": "true"}).json()
    assert held["state"] == "held" and held["total"] == 2
    assert api.post("/newsletters/nope/editions").status_code == 404
    sent = api.post(f"/editions/{held['edition_id']}/send").json()
    assert sent["state"] == "sending"
    api.post(f"/editions/{held['edition_id']}/pause")
    assert api.post(f"/editions/{held['edition_id']}/send").status_code == 409


def test_a_subject_template_that_fails_is_a_422_not_a_500(env, web_server) -> None:
    env["DIGEST_API_TOKENS"] = TOKEN
    settings = load_settings(env)
    seed_sample_site(settings, 2)
    with _sessions(settings)() as session:
        newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == "daily")).one()
        # Saved before the limits were tightened: refused now, when the edition is prepared.
        newsletter.subject_template = "{{ 'x' * 100000 }}"
        session.commit()
    base = web_server(settings)
    api = httpx.Client(base_url=f"{base}/api", headers={"Authorization": f"Bearer {TOKEN}"})
    refused = api.post("/newsletters/daily/editions")
    assert refused.status_code == 422
    assert "subject" in refused.json()["detail"]


def test_an_edition_whose_rows_all_wait_for_local_hours_is_scheduled(env) -> None:
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 3)
    now = utcnow()
    with _sessions(settings)() as session:
        rows = session.scalars(select(Delivery).where(Delivery.edition_id == edition.id)).all()
        for n, row in enumerate(rows):
            row.not_before = now + timedelta(hours=n + 1)
        session.commit()
        status = edition_status(session, edition.id, now)
        assert (status.state, status.waiting) == ("scheduled", 3)
        assert status.next_local_send_at == now + timedelta(hours=1)
        # Once the first bucket is due, the edition is sending again.
        assert edition_status(session, edition.id, now + timedelta(hours=1)).state == "sending"
