"""An editor previews an edition (HTML, text, screenshots) and sends a test: nothing is counted
and no reader's link works from a preview."""

from __future__ import annotations

import re

from click.testing import CliRunner
from sqlalchemy import select

from digest.cli import main
from digest.config import load_settings
from digest.db import session_factory
from digest.editions import prepare_edition
from digest.models import Delivery, DeliveryState, EditionSegment, Newsletter, Subscription, utcnow
from tests.support import parse_message, seed_sample_site

PNG = b"\x89PNG\r\n\x1a\n"


def _held_edition(env) -> int:
    settings = load_settings(env)
    newsletter_id = seed_sample_site(settings, 2)
    with session_factory(settings.database_url)() as session:
        session.scalars(select(Subscription).order_by(Subscription.id)).first().sections = ["Asia"]
        session.commit()
        now = utcnow()
        newsletter = session.get_one(Newsletter, newsletter_id)
        return prepare_edition(session, newsletter, now.date(), now, hold=True).id


def test_preview_writes_html_text_and_screenshots(env, tmp_path, chromium) -> None:
    env["DIGEST_CHROMIUM"] = chromium
    edition_id = _held_edition(env)
    runner = CliRunner()
    out = tmp_path / "preview"
    result = runner.invoke(
        main, ["editions", "preview", str(edition_id), "--out", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    html = (out / f"edition-{edition_id}.html").read_text()
    text = (out / f"edition-{edition_id}.txt").read_text()
    for name in ("desktop", "mobile"):
        assert (out / f"edition-{edition_id}-{name}.png").read_bytes().startswith(PNG)
    # Plain story links, no pixel, no working reader's link.
    assert not re.search(r"/(c|o|u|p|v)/", html + text)
    assert 'href="#preview"' in html and "utm_medium=email" in html

    mine = runner.invoke(
        main,
        ["editions", "preview", str(edition_id), "--out", str(out), "--no-screenshots",
         "--subscriber", "reader001@example.org"],
        env=env,
    )  # fmt: skip
    assert mine.exit_code == 0, mine.output
    chosen = (out / f"edition-{edition_id}-reader001.txt").read_text()
    assert len(chosen) < len(text)  # only Asia among the latest
    for bad, message in (
        (["--subscriber", "nobody@example.org"], "does not subscribe"),
        (["--subscriber", "not an address"], "not an address"),
    ):
        refused = runner.invoke(
            main, ["editions", "preview", str(edition_id), "--no-screenshots", *bad], env=env
        )
        assert refused.exit_code == 1 and message in refused.output, refused.output
    assert "no edition 999" in runner.invoke(main, ["editions", "preview", "999"], env=env).output


def test_a_test_send_reaches_the_address_and_counts_nothing(env, smtp_sink) -> None:
    env["DIGEST_SMTP_URL"] = smtp_sink.url
    edition_id = _held_edition(env)
    result = CliRunner().invoke(
        main, ["editions", "test-send", str(edition_id), "--to", "Desk@News.example.com"], env=env
    )
    assert result.exit_code == 0, result.output
    (message,) = smtp_sink.messages
    assert message.rcpt_tos == ["desk@news.example.com"]
    parsed = parse_message(message.data)
    assert parsed["Subject"].startswith("[Test] Example News Daily: ")
    with session_factory(load_settings(env).database_url)() as session:
        states = set(
            session.scalars(select(Delivery.state).where(Delivery.edition_id == edition_id))
        )
        assert states == {DeliveryState.QUEUED}
        assert session.scalar(select(EditionSegment.id)) is None  # nothing in the ledger
