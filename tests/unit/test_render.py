"""Rendering a frozen edition: order, escaping in HTML only, links and the open pixel, the
inlined CSS, the locale."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import css_inline
import pytest
from markupsafe import escape

from digest.render import Frame, RenderedMessage, environment, render_layout
from digest.selection import LATEST, MUST_READS, Limits, Reader, personalise

HOSTILE = "<img src=x onerror=alert(1)>"
PIXEL = "https://news.example.com/o/WzFd.sig"


def _item(story_id: int, title: str, section: str = "WORLD", summary: str = "") -> dict[str, Any]:
    # Link ids differ from story ids, as they do in a real edition.
    return {
        "story_id": story_id,
        "link_id": 100 + story_id,
        "title": title,
        "section": section,
        "summary": summary,
        "published_at": "2026-11-25T06:00:00+00:00",
    }


# Shaped like digest/editions.py freezes it.
CONTENT = {
    "blocks": [
        {
            "key": MUST_READS,
            "title": "Must-Reads",
            "items": [
                _item(1, "Kim Jong Un’s Achievements in 2024", "ASIA", "What Pyongyang counts."),
                _item(2, HOSTILE, "DEBATE", f"Summary with {HOSTILE} in it."),
            ],
        },
        {
            "key": LATEST,
            "title": "Latest Stories",
            "items": [
                _item(3, "North Korea’s Dangerous New Role in Russia’s War", "ASIA"),
                _item(4, "Tom & Jerry’s “quoted” headline", ""),
            ],
        },
    ]
}
ITEMS = [item for block in CONTENT["blocks"] for item in block["items"]]
LIMITS = Limits(must_reads=5, latest=10, section_quota=4, popular=5)


def frame(subject: str, preheader: str, locale: str = "en") -> Frame:
    return Frame("Example News Daily", subject, preheader, "", date(2026, 11, 25), locale)


def href(link_id: int) -> str:
    return f"https://news.example.com/c/{link_id}?d=7&k=tok"


def render_edition(
    subject: str,
    preheader: str,
    content: dict[str, Any],
    link: Callable[[int], str],
    open_pixel_url: str | None,
    *,
    unsubscribe_url: str,
    preferences_url: str,
    sections: list[str] | None = None,
    locale: str = "en",
) -> RenderedMessage:
    """One reader's message, as the sending engine makes it: a layout, then its URLs."""
    reader = Reader(
        sections=None if sections is None else frozenset(s.casefold() for s in sections)
    )
    layout = render_layout(
        frame(subject, preheader, locale),
        personalise(content["blocks"], reader, LIMITS),
        tracked=open_pixel_url is not None,
    )
    fixed = {
        "pixel": open_pixel_url or "",
        "unsubscribe": unsubscribe_url,
        "preferences": preferences_url,
        "view": "https://news.example.com/v/VIEW",
    }
    return layout.fill(
        lambda name: fixed[name] if name in fixed else link(int(name.removeprefix("link_")))
    )


def render(
    open_pixel_url: str | None = PIXEL, content: dict[str, Any] = CONTENT
) -> RenderedMessage:
    return render_edition(
        "Example News Daily: Kim Jong Un’s Achievements",
        "North Korea’s Dangerous New Role · Tom & Jerry",
        content,
        href,
        open_pixel_url,
        unsubscribe_url="https://news.example.com/u/UNSUB",
        preferences_url="https://news.example.com/p/PREFS",
    )


def _in_order(document: str, needles: list[str]) -> bool:
    positions = [document.find(n) for n in needles]
    return -1 not in positions and positions == sorted(positions)


@pytest.fixture(scope="module")
def rendered() -> RenderedMessage:
    return render()


def test_blocks_and_items_keep_their_order(rendered):
    text_order = [
        "MUST-READS",
        ITEMS[0]["title"],
        ITEMS[1]["title"],
        "LATEST STORIES",
        ITEMS[2]["title"],
        ITEMS[3]["title"],
    ]
    html_order = [
        "Must-Reads",
        str(escape(ITEMS[0]["title"])),
        str(escape(ITEMS[1]["title"])),
        "Latest Stories",
        str(escape(ITEMS[2]["title"])),
        str(escape(ITEMS[3]["title"])),
    ]

    assert _in_order(rendered.text, text_order)
    assert _in_order(rendered.html, html_order)


def test_reversed_blocks_render_reversed():
    content = {"blocks": list(reversed(CONTENT["blocks"]))}

    result = render(content=content)

    assert _in_order(result.text, ["LATEST STORIES", "MUST-READS"])
    assert _in_order(result.html, ["Latest Stories", "Must-Reads"])


def test_html_escapes_hostile_markup(rendered):
    assert "<img src=x" not in rendered.html
    assert "onerror=alert(1)>" not in rendered.html
    assert str(escape(HOSTILE)) in rendered.html
    assert "Tom &amp; Jerry’s" in rendered.html


def test_text_shows_hostile_markup_literally(rendered):
    assert f"[DEBATE] {HOSTILE}" in rendered.text
    assert f"Summary with {HOSTILE} in it." in rendered.text
    assert "Tom & Jerry’s “quoted” headline" in rendered.text
    assert "&lt;" not in rendered.text
    assert "&amp;" not in rendered.text


@pytest.mark.parametrize("item", ITEMS, ids=[str(i["link_id"]) for i in ITEMS])
def test_each_link_appears_in_both_parts(rendered, item):
    url = href(item["link_id"])

    assert f'href="{escape(url)}"' in rendered.html
    assert f"\n{url}\n" in rendered.text


def test_open_pixel_only_when_given(rendered):
    assert f'<img src="{PIXEL}"' in rendered.html
    assert PIXEL not in rendered.text

    without = render(open_pixel_url=None)
    assert "<img" not in without.html


def test_preheader_is_in_the_html(rendered):
    assert "North Korea’s Dangerous New Role · Tom &amp; Jerry" in rendered.html


def test_subject_is_passed_through(rendered):
    assert rendered.subject == "Example News Daily: Kim Jong Un’s Achievements"
    assert "<title>Example News Daily: Kim Jong Un’s Achievements</title>" in rendered.html


def test_every_message_links_to_unsubscribe_and_preferences(rendered):
    for part in (rendered.html, rendered.text):
        assert "https://news.example.com/u/UNSUB" in part
        assert "https://news.example.com/p/PREFS" in part


def test_a_readers_sections_leave_out_other_stories_but_never_the_must_reads():
    chosen = render_edition(
        "Subject",
        "",
        CONTENT,
        href,
        None,
        unsubscribe_url="https://news.example.com/u/UNSUB",
        preferences_url="https://news.example.com/p/PREFS",
        sections=["Debate"],  # matched whatever the case
    )
    assert "Kim Jong Un" in chosen.text  # a Must-Read, though of another section
    assert "North Korea’s Dangerous New Role" not in chosen.text
    assert "Latest Stories" not in chosen.html  # the block is empty for this reader


@pytest.mark.parametrize("pixel", [PIXEL, None])
@pytest.mark.parametrize("sections", [None, ["Asia"]])
def test_a_filled_layout_is_what_rendering_each_message_would_give(pixel, sections):
    # The layout renders once with slots and fills URLs in per reader; rendering the template
    # with the reader's URLs directly is the reference. Untracked links carry & in their query.
    def plain(link_id: int) -> str:
        return f"https://news.example.com/story/{link_id}?utm_source=newsletter&utm_medium=email"

    reader = Reader(
        sections=None if sections is None else frozenset(s.casefold() for s in sections)
    )
    blocks = [
        {
            "title": block["title"],
            "groups": [
                {
                    "heading": group["heading"],
                    "items": [{**item, "href": plain(item["link_id"])} for item in group["items"]],
                }
                for group in block["groups"]
            ],
        }
        for block in personalise(CONTENT["blocks"], reader, LIMITS)
    ]
    context = {
        "meta": [],
        "newsletter_name": "Example News Daily",
        "subject": "Subject",
        "preheader": "Pre & header",
        "intro": "",
        "issue_date": date(2026, 11, 25),
        "lang": "en",
        "blocks": blocks,
        "open_pixel_url": pixel,
        "unsubscribe_url": "https://news.example.com/u/UN&SUB",
        "preferences_url": "https://news.example.com/p/PREFS",
        "view_url": "https://news.example.com/v/VIEW",
    }
    env = environment()
    filled = render_edition(
        "Subject",
        "Pre & header",
        CONTENT,
        plain,
        pixel,
        unsubscribe_url="https://news.example.com/u/UN&SUB",
        preferences_url="https://news.example.com/p/PREFS",
        sections=sections,
    )
    inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
    assert filled.html == inliner.inline(env.get_template("email/digest.html").render(context))
    assert filled.text == env.get_template("email/digest.txt").render(context)
    assert "utm_source=newsletter&amp;utm_medium=email" in filled.html


@pytest.mark.parametrize(
    "forged",
    ["\ue000unsubscribe\ue001", "\ue000oops\ue001", "\ue000pixel\ue001", "\ue000", "\x00"],
)
def test_feed_text_can_neither_forge_a_slot_nor_break_the_layout(forged):
    content = {
        "blocks": [
            {
                "key": LATEST,
                "title": f"Latest {forged}",
                "items": [_item(3, f"Title {forged}", "ASIA", f"Summary {forged}")],
            }
        ]
    }
    rendered = render_edition(
        f"Subject {forged}",
        f"Pre {forged}",
        content,
        href,
        None,
        unsubscribe_url="https://news.example.com/u/UNSUB",
        preferences_url="https://news.example.com/p/PREFS",
    )
    for part in (rendered.html, rendered.text):
        assert "\x00" not in part
        assert "\ue000" not in part
        assert part.count("https://news.example.com/u/UNSUB") == 1  # the footer's only
        assert "/o/" not in part


def test_css_is_inlined_and_the_media_queries_stay(rendered):
    # Outlook and Gmail's app ignore <style>: every element carries its own style.
    assert 'class="headline"' in rendered.html
    assert "font-size: 18px" in rendered.html
    assert "@media only screen and (max-width: 620px)" in rendered.html
    assert "prefers-color-scheme: dark" in rendered.html
    assert '<meta name="color-scheme" content="light dark">' in rendered.html


def test_latest_stories_are_grouped_by_section(rendered):
    # The section heading replaces each item's kicker inside Latest Stories.
    assert _in_order(rendered.text, ["LATEST STORIES", "-- ASIA --", "North Korea’s Dangerous"])
    assert "[ASIA] North Korea" not in rendered.text
    assert "[ASIA] Kim Jong Un" in rendered.text  # Must-Reads keep their kicker


def test_the_newsletters_locale_translates_words_and_formats_the_date():
    german = render_edition(
        "Betreff",
        "",
        CONTENT,
        href,
        None,
        unsubscribe_url="https://news.example.com/u/UNSUB",
        preferences_url="https://news.example.com/p/PREFS",
        locale="de",
    )
    assert "Mittwoch, 25. November 2026" in german.text
    assert "LESENSWERT" in german.text and "Abbestellen" in german.html
    assert '<html lang="de"' in german.html
    # A region without its own file uses the language's; a language without one stays English.
    assert (
        "Lesenswert"
        in render_edition(
            "S", "", CONTENT, href, None, unsubscribe_url="u", preferences_url="p", locale="de_AT"
        ).html
    )
    japanese = render_edition(
        "S", "", CONTENT, href, None, unsubscribe_url="u", preferences_url="p", locale="ja"
    )
    assert "Must-Reads" in japanese.html and "2026年11月25日" in japanese.text
