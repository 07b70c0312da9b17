"""Rendering an edition's frozen content into the HTML and plain-text parts of one message."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import escape

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


# Where a reader's own URL goes in a layout: NUL-delimited, since autoescaping leaves NUL
# alone and no text of ours may contain it (``_text`` takes it out of everything that comes
# from feeds and editors, so content can neither forge a slot nor break the split).
_SLOT = re.compile("\x00([a-z0-9_]+)\x00")


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: _text(item) for key, item in value.items()}
    return value


def _slot(name: str) -> str:
    return f"\x00{name}\x00"


@dataclass(frozen=True)
class EditionLayout:
    """An edition rendered once for one kind of reader (their sections; tracked or not), with
    a slot wherever a reader's own URL goes. ``fill`` makes each reader's message with string
    joins: Jinja runs once per batch and kind of reader, not once per message.

    The parts alternate: literal text, slot name, literal text, ..., literal text.
    """

    subject: str
    html: tuple[str, ...]
    text: tuple[str, ...]

    def fill(self, url: Callable[[str], str]) -> RenderedMessage:
        """``url`` gives this reader's URL for a slot: ``link_<id>``, ``pixel``,
        ``unsubscribe`` or ``preferences``. In HTML the URL is escaped as the template's
        autoescaping would have."""
        return RenderedMessage(
            subject=self.subject,
            html=_joined(self.html, lambda name: str(escape(url(name)))),
            text=_joined(self.text, url),
        )


def _joined(parts: tuple[str, ...], value: Callable[[str], str]) -> str:
    filled = list(parts)
    for n in range(1, len(parts), 2):
        filled[n] = value(parts[n])
    return "".join(filled)


def link_slot(link_id: int) -> str:
    return f"link_{link_id}"


def render_layout(
    newsletter_name: str,
    subject: str,
    preheader: str,
    content: Mapping[str, Any],
    *,
    tracked: bool,
    sections: Collection[str] | None = None,
    template: str = "digest",
) -> EditionLayout:
    """Render the frozen content for readers who chose ``sections`` (None: every section):
    stories of other sections are left out, except the Must-Reads, which the newsroom chose
    for everyone; a block left empty is left out. Untracked readers get no open pixel."""
    chosen = None if sections is None else {s.casefold() for s in sections}
    blocks = []
    for block in content["blocks"]:
        items = [
            {**_text(item), "href": _slot(link_slot(item["link_id"]))}
            for item in block["items"]
            if chosen is None
            or block.get("key") == MUST_READS
            or item.get("section", "").casefold() in chosen
        ]
        if items:
            blocks.append({"title": _text(block["title"]), "items": items})
    context = {
        "newsletter_name": _text(newsletter_name),
        "subject": _text(subject),
        "preheader": _text(preheader),
        "blocks": blocks,
        "open_pixel_url": _slot("pixel") if tracked else None,
        "unsubscribe_url": _slot("unsubscribe"),
        "preferences_url": _slot("preferences"),
    }
    env = environment()
    return EditionLayout(
        subject=subject,
        html=tuple(_SLOT.split(env.get_template(f"email/{template}.html").render(context))),
        text=tuple(_SLOT.split(env.get_template(f"email/{template}.txt").render(context))),
    )
