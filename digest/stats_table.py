"""An edition's numbers as a table for the terminal (``digest stats``)."""

from __future__ import annotations

from collections.abc import Mapping

from digest.models import ClickKind
from digest.stats import EditionReport, EditionStats

TITLE_WIDTH = 60
SECTION_WIDTH = 13
COUNT_HEADERS = ("Human", "Total", "Machine")
COUNT_WIDTH = 9


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
        "Bounces         "
        f"{e.bounces['hard']} hard, {e.bounces['soft']} soft; complaints {e.bounces['complaint']}",
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(number: object, section: str, title: str, *counts: object) -> str:
    cells = "".join(f"{count:>{COUNT_WIDTH}}" for count in counts)
    section, title = _clip(section, SECTION_WIDTH), _clip(title, TITLE_WIDTH)
    return f"{number:>3}  {section:<{SECTION_WIDTH}} {title:<{TITLE_WIDTH}}{cells}"


def render_table(report: EditionReport) -> str:
    """The summary, then one row per story in the order the edition showed them."""
    lines = [*_summary_lines(report.edition), "", _row("#", "Section", "Story", *COUNT_HEADERS)]
    for number, story in enumerate(report.stories, 1):
        c = story.clicks
        lines.append(
            _row(
                number,
                story.section or "-",
                story.title,
                c.unique_human,
                c.total_human,
                c.non_human,
            )
        )
    lines.append("Human = readers who clicked (unique), Total = their clicks, Machine = the rest.")
    return "\n".join(lines)
