"""`digest stats EDITION_ID`, run as an editor runs it, on a sent edition (SQLite)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from digest.cli import main
from digest.config import load_settings
from digest.db import session_factory
from digest.models import ClickKind, OpenKind, SegmentStory
from digest.stats import CSV_COLUMNS
from tests.support import sent_with_engagement

SUBSCRIBERS = 4


@pytest.fixture
def digest(env: dict[str, str]) -> Callable[..., Result]:
    # The developer's own DIGEST_* settings must not leak into the command.
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DIGEST_")}
    runner = CliRunner()

    def digest(*args: str) -> Result:
        return runner.invoke(main, list(args), env={**unset, **env})

    return digest


@pytest.fixture
def edition(env: dict[str, str]) -> dict[str, object]:
    """Sent to four readers; one reads and clicks the first story, a bot clicks it too, and
    Apple prefetches for another reader."""
    edition, first = sent_with_engagement(
        load_settings(env),
        SUBSCRIBERS,
        opens=[OpenKind.HUMAN, OpenKind.PREFETCH],
        clicks=[(0, ClickKind.HUMAN), (0, ClickKind.HUMAN), (2, ClickKind.BOT)],
    )
    # The stories the readers got: the edition's pool holds more.
    with session_factory(load_settings(env).database_url)() as session:
        stories = session.scalar(select(func.count(func.distinct(SegmentStory.story_id))))
    return {"id": edition.id, "first": first, "stories": stories}


def _story_row(output: str, number: int) -> list[str]:
    return next(line for line in output.splitlines() if line.startswith(f"{number:>3}  ")).split()


def test_table(digest, edition) -> None:
    result = digest("stats", str(edition["id"]))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Edition {edition['id']} of " in out
    assert f"Recipients      {SUBSCRIBERS} (0 queued, 0 sending, {SUBSCRIBERS} sent," in out
    assert f"Delivered       {SUBSCRIBERS}" in out
    assert "Human opens     1 unique" in out
    assert "1 prefetch, 0 scanner, 0 bot, 0 unclassified (unique deliveries)" in out
    assert "Human clicks    1 unique, 2 total" in out
    assert "0 scanner, 1 bot, 0 unclassified (total clicks)" in out
    assert "Click rate      25.0%" in out
    assert "Click-to-open   100.0%" in out
    assert "Unsubscribes    0" in out
    assert "Bounces         0 hard, 0 soft; complaints 0" in out
    first = _story_row(out, 1)
    assert first[1] == edition["first"]["section"]
    assert first[-3:] == ["1", "2", "1"]  # human unique, human total, machine
    assert _story_row(out, 2)[-3:] == ["0", "0", "0"]


def test_csv_to_stdout_is_only_csv(digest, edition) -> None:
    result = digest("stats", str(edition["id"]), "--csv", "-")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    first = edition["first"]
    story = next(r for r in rows if r["level"] == "story")
    assert (story["story_id"], story["title"]) == (str(first["story_id"]), first["title"])
    assert (story["unique_human_clicks"], story["total_human_clicks"]) == ("1", "2")
    assert story["non_human_clicks"] == "1"
    levels = [r["level"] for r in rows]
    assert levels == ["story"] * edition["stories"] + ["link"] * edition["stories"]


def test_csv_to_a_file_and_the_table_on_screen(digest, edition, tmp_path: Path) -> None:
    target = tmp_path / "stats.csv"
    result = digest("stats", str(edition["id"]), "--csv", str(target))
    assert result.exit_code == 0, result.output
    assert "Human clicks    1 unique, 2 total" in result.output
    assert f"CSV written to {target}" in result.output
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) > 2


def test_unknown_edition_is_a_clear_error(digest, edition, tmp_path: Path) -> None:
    target = tmp_path / "never.csv"
    result = digest("stats", "999999", "--csv", str(target))
    assert result.exit_code != 0
    assert "there is no edition 999999" in result.output
    assert not target.exists()


def test_edition_id_must_be_a_number(digest) -> None:
    result = digest("stats", "latest")
    assert result.exit_code == 2
    assert "is not a valid integer" in result.output
