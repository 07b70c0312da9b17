"""Rendering an edition's frozen content into the HTML and plain-text parts of one message.

Jinja and the CSS inliner run once per edition and kind of reader (a segment: the same
stories, tracked or not), never per subscriber: the result is a layout with a slot wherever a
reader's own URL goes, and ``EditionLayout.fill`` makes each message with string joins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

import css_inline
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import escape

from digest.models import Edition

DEFAULT_LOCALE = "en"


def templates_dir() -> Path:
    """Templates ship inside the wheel as ``digest/templates``; a source checkout (including an
    editable install) keeps them at the top-level ``templates/`` folder."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


def check_locale(name: str) -> str:
    """The locale in Babel's spelling (``de_AT``); ValueError naming the problem otherwise."""
    try:
        return str(Locale.parse(name.replace("-", "_")))
    except (ValueError, UnknownLocaleError) as exc:
        raise ValueError(f"unknown locale {name!r}: use a code such as en, de or pt_BR") from exc


def _translations(locale: str) -> NullTranslations:
    """The templates' words in ``locale`` from ``templates/locale/<lang>.po``, compiled in
    memory (no build step); the language alone when there is no file for the region."""
    folder = templates_dir() / "locale"
    for name in (locale, locale.split("_")[0]):
        po = folder / f"{name}.po"
        if po.is_file():
            with po.open("rb") as source:
                catalog = read_po(source, locale=name)
            compiled = BytesIO()
            write_mo(compiled, catalog)
            compiled.seek(0)
            return Translations(compiled)
    return NullTranslations()


@cache
def environment(locale: str = DEFAULT_LOCALE) -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates_dir()),
        # HTML is escaped everywhere; the plain-text part must not be (it would show "&amp;").
        autoescape=select_autoescape(disabled_extensions=("txt",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(_translations(locale), newstyle=True)
    env.filters["date"] = lambda value, format="long": format_date(
        value, format=format, locale=locale
    )
    env.filters["number"] = lambda value: format_decimal(value, locale=locale)
    return env


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


# Where a reader's own URL goes in a layout: delimited by two private-use characters, which
# autoescaping and the CSS inliner's HTML parser both leave alone (the parser would replace
# NUL). ``_text`` takes them out of everything that comes from feeds and editors, so content
# can neither forge a slot nor break the split.
_OPEN, _CLOSE = "\ue000", "\ue001"
_SLOT = re.compile(f"{_OPEN}([a-z0-9_]+){_CLOSE}")
_FORBIDDEN = str.maketrans("", "", f"\x00{_OPEN}{_CLOSE}")


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value.translate(_FORBIDDEN)
    if isinstance(value, dict):
        return {key: _text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_text(item) for item in value]
    return value


def _slot(name: str) -> str:
    return f"{_OPEN}{name}{_CLOSE}"


def link_slot(link_id: int) -> str:
    return f"link_{link_id}"


@dataclass(frozen=True)
class EditionLayout:
    """An edition rendered once for one kind of reader, with a slot wherever a reader's own
    URL goes. The parts alternate: literal text, slot name, literal text, ..., literal text.
    """

    subject: str
    html: tuple[str, ...]
    text: tuple[str, ...]

    def fill(self, url: Callable[[str], str]) -> RenderedMessage:
        """``url`` gives this reader's URL for a slot: ``link_<id>``, ``pixel``,
        ``unsubscribe``, ``preferences`` or ``view``. In HTML the URL is escaped as the
        template's autoescaping would have."""
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


@dataclass(frozen=True)
class Frame:
    """What every reader's copy of an edition shares."""

    newsletter_name: str
    subject: str
    preheader: str
    intro: str
    issue_date: date
    locale: str = DEFAULT_LOCALE
    template: str = "digest"

    @classmethod
    def of(cls, edition: Edition) -> Frame:
        newsletter = edition.newsletter
        return cls(
            newsletter_name=newsletter.name,
            subject=edition.subject,
            preheader=edition.preheader,
            intro=edition.intro,
            issue_date=edition.issue_date,
            locale=newsletter.locale,
            template=newsletter.template,
        )


# Inlined once per layout; the <style> block stays for what cannot be inlined (the mobile
# media query, dark mode), which clients that support <style> apply on top.
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)


def render_context(
    frame: Frame,
    blocks: list[Mapping[str, Any]],
    url: Callable[[str], str],
    *,
    tracked: bool,
    personal: bool = True,
    meta: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The templates' context for personalised blocks (digest.selection.personalise), with
    ``url(slot)`` wherever a reader's own URL goes. Untracked readers get no open pixel; a
    copy that is not personal (the public archive) has no unsubscribe, preferences or "view
    in browser" links. ``meta``: (property, content) pairs for the page's head (OpenGraph
    tags on the archive's pages)."""
    return {
        "meta": meta,
        "newsletter_name": _text(frame.newsletter_name),
        "subject": _text(frame.subject),
        "preheader": _text(frame.preheader),
        "intro": _text(frame.intro),
        "issue_date": frame.issue_date,
        "lang": frame.locale.split("_")[0],
        "blocks": [
            {
                "title": _text(block["title"]),
                "groups": [
                    {
                        "heading": _text(group["heading"]),
                        "items": [
                            {**_text(item), "href": url(link_slot(item["link_id"]))}
                            for item in group["items"]
                        ],
                    }
                    for group in block["groups"]
                ],
            }
            for block in blocks
        ],
        "open_pixel_url": url("pixel") if tracked and personal else None,
        "unsubscribe_url": url("unsubscribe") if personal else None,
        "preferences_url": url("preferences") if personal else None,
        "view_url": url("view") if personal else None,
    }


def render_layout(
    frame: Frame,
    blocks: list[Mapping[str, Any]],
    *,
    tracked: bool,
    personal: bool = True,
    meta: Sequence[tuple[str, str]] = (),
) -> EditionLayout:
    """Render and inline once, with slots for the URLs (``EditionLayout.fill``)."""
    context = render_context(
        frame, blocks, _slot, tracked=tracked, personal=personal, meta=_text(list(meta))
    )
    env = environment(frame.locale)
    html = _INLINER.inline(env.get_template(f"email/{frame.template}.html").render(context))
    text = env.get_template(f"email/{frame.template}.txt").render(context)
    return EditionLayout(
        subject=frame.subject, html=tuple(_SLOT.split(html)), text=tuple(_SLOT.split(text))
    )
