"""``digest stats EDITION_ID``: an edition's numbers as a table, or as CSV.

Registered on the ``digest`` group when digest.cli imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from digest.cli import _session, _settings, main
from digest.models import ClickKind
from digest.stats import EditionNotFound, EditionReport, EditionStats, edition_report, to_csv

TITLE_WIDTH = 60


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


def _machines(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if kind != ClickKind.HUMAN)


def _summary_lines(e: EditionStats) -> list[str]:
    states = ", ".join(f"{n} {state}" for state, n in e.deliveries.items())
    human_clicks = e.clicks_by_kind[ClickKind.HUMAN]
    machine_opens = _machines({kind: t.unique for kind, t in e.opens_by_kind.items()})
    machine_clicks = _machines({kind: t.total for kind, t in e.clicks_by_kind.items()})
    return [
        f"Edition {e.edition_id} of {e.issue_date:%Y-%m-%d}: {e.subject}",
        "",
        f"Recipients      {e.recipients} ({states})",
        f"Delivered       {e.delivered}",
        f"Human opens     {e.unique_human_opens} unique",
        f"  machines      {machine_opens} (unique deliveries)",
        f"Human clicks    {human_clicks.unique} unique, {human_clicks.total} total",
        f"  machines      {machine_clicks} (total clicks)",
        f"Click rate      {_percent(e.click_rate)} (unique human clicks / delivered)",
        f"Click-to-open   {_percent(e.click_to_open_rate)} (unique human clicks / human opens)",
        f"Unsubscribes    {e.unsubscribes}",
        "Bounces and complaints are not processed yet, so they are not shown.",
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(report: EditionReport) -> str:
    """The summary, then one row per story in the order the edition showed them."""
    lines = _summary_lines(report.edition)
    story = "Story"
    lines += ["", f"  #  {'Section':<10} {story:<{TITLE_WIDTH}}  Human  Total  Machine"]
    for number, story in enumerate(report.stories, 1):
        c = story.clicks
        lines.append(
            f"{number:>3}  {_clip(story.section or '-', 10):<10} "
            f"{_clip(story.title, TITLE_WIDTH):<{TITLE_WIDTH}} "
            f"{c.unique_human:>6} {c.total_human:>6} {c.non_human:>8}"
        )
    lines.append("Human = readers who clicked (unique), Total = their clicks, Machine = the rest.")
    return "\n".join(lines)


@main.command()
@click.argument("edition_id", type=int)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
    default=None,
    help="Write per-story and per-link rows as CSV to FILE, or to standard output with -.",
)
def stats(edition_id: int, csv_path: Path | None) -> None:
    """An edition's deliveries, opens, clicks and unsubscribes; people apart from machines."""
    with _session(_settings()) as session:
        try:
            report = edition_report(session, edition_id)
        except EditionNotFound as exc:
            raise click.ClickException(str(exc)) from exc
    if csv_path is not None and str(csv_path) == "-":
        # Only the CSV on standard output, so it can be piped straight into another tool.
        click.echo(to_csv(report), nl=False)
        return
    click.echo(render_table(report))
    if csv_path is not None:
        try:
            # newline="": the csv module already ends rows with CRLF (RFC 4180).
            csv_path.write_text(to_csv(report), encoding="utf-8", newline="")
        except OSError as exc:
            raise click.ClickException(f"cannot write {csv_path}: {exc}") from exc
        click.echo(f"CSV written to {csv_path}")
