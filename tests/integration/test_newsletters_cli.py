"""Newsletters managed from the CLI, and an edition prepared for review, then sent."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from digest.cli import main
from digest.config import load_settings
from digest.db import session_factory
from digest.models import Edition, Newsletter, utcnow
from digest.sending import has_claimable
from tests.support import seed_sample_site


def test_newsletters_are_created_changed_and_checked(env) -> None:
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["newsletters", "save", "weekly", "--name", "The Week", "--sections", "World, Sport",
         "--local-send-hour", "7", "--reply-to", "desk@news.example.com"],
        env=env,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "local 07:00" in created.output and "World, Sport" in created.output
    changed = runner.invoke(main, ["newsletters", "save", "weekly", "--weekly-day", "4"], env=env)
    assert changed.exit_code == 0, changed.output
    # A local send hour set once can be cleared again.
    cleared = runner.invoke(
        main, ["newsletters", "save", "weekly", "--local-send-hour", "off"], env=env
    )
    assert cleared.exit_code == 0 and "local" not in cleared.output, cleared.output
    for bad in (
        ["newsletters", "save", "new"],  # no name
        ["newsletters", "save", "weekly", "--local-send-hour", "24"],
        ["newsletters", "save", "weekly", "--send-hour-utc", "never"],
        ["newsletters", "save", "weekly", "--template", "missing"],
        ["newsletters", "save", "weekly", "--from", "not an address"],
    ):
        refused = runner.invoke(main, bad, env=env)
        assert refused.exit_code != 0 and "Error" in refused.output, bad
    listed = runner.invoke(main, ["newsletters", "list"], env=env)
    assert listed.output.startswith("weekly: The Week")
    with session_factory(load_settings(env).database_url)() as session:
        weekly = session.scalars(select(Newsletter)).one()
        assert (weekly.weekly_day, weekly.reply_to, weekly.sections, weekly.local_send_hour) == (
            4,
            "desk@news.example.com",
            ["World", "Sport"],
            None,
        )


def test_a_held_edition_waits_for_send(env) -> None:
    settings = load_settings(env)
    seed_sample_site(settings, 3)
    runner = CliRunner()
    held = runner.invoke(main, ["editions", "prepare", "daily", "--hold"], env=env)
    assert held.exit_code == 0 and ": held" in held.output, held.output
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        edition_id = session.scalar(select(Edition.id))
        assert not has_claimable(session, edition_id, utcnow())
    sent = runner.invoke(main, ["editions", "send", str(edition_id)], env=env)
    assert sent.exit_code == 0 and ": sending" in sent.output, sent.output
    with sessions() as session:
        assert has_claimable(session, edition_id, utcnow())
    # A pause (by an editor, or the engine after errors) is lifted by resume, not by send.
    runner.invoke(main, ["editions", "pause", str(edition_id)], env=env)
    refused = runner.invoke(main, ["editions", "send", str(edition_id)], env=env)
    assert refused.exit_code == 1 and "resume it" in refused.output
    again = runner.invoke(main, ["editions", "prepare", "daily"], env=env)
    assert again.exit_code == 0 and f"edition {edition_id} " in again.output
    missing = runner.invoke(main, ["editions", "prepare", "nope"], env=env)
    assert missing.exit_code == 1 and "the newsletters are: daily" in missing.output
