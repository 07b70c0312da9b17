"""Rendering an edition's frozen content into the HTML and plain-text parts of one message."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from digest.selection import MUST_READS


def templates_dir() -> Path:
    """Templates ship inside the wheel as ``digest/templates``; a source checkout (including an
    editable install) keeps them at the top-level ``templates/`` folder."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(templates_dir()),
        # HTML is escaped everywhere; the plain-text part must not be (it would show "&amp;").
        autoescape=select_autoescape(disabled_extensions=("txt",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


def render_edition(
    newsletter_name: str,
    subject: str,
    preheader: str,
    content: Mapping[str, Any],
    href: Callable[[int], str],
    open_pixel_url: str | None,
    *,
    unsubscribe_url: str,
    preferences_url: str,
    sections: Collection[str] | None = None,
    template: str = "digest",
) -> RenderedMessage:
    """``href`` maps a frozen item's link id to the URL this recipient should see.

    ``sections`` are the reader's choice (None: every section): stories of other sections are
    left out, except the Must-Reads, which the newsroom chose for everyone. A block left empty
    is left out.
    """
    chosen = None if sections is None else {s.casefold() for s in sections}
    blocks = []
    for block in content["blocks"]:
        items = [
            {**item, "href": href(item["link_id"])}
            for item in block["items"]
            if chosen is None
            or block.get("key") == MUST_READS
            or item.get("section", "").casefold() in chosen
        ]
        if items:
            blocks.append({"title": block["title"], "items": items})
    context = {
        "newsletter_name": newsletter_name,
        "subject": subject,
        "preheader": preheader,
        "blocks": blocks,
        "open_pixel_url": open_pixel_url,
        "unsubscribe_url": unsubscribe_url,
        "preferences_url": preferences_url,
    }
    env = environment()
    return RenderedMessage(
        subject=subject,
        html=env.get_template(f"email/{template}.html").render(context),
        text=env.get_template(f"email/{template}.txt").render(context),
    )
