"""A social post's text from its platform's template (``templates/social/<platform>.txt``),
made to fit the platform's length rule by shortening the summary, never the link.

The text is composed once, when the post is scheduled, and stored on the post row: a retry
sends exactly what was checked, and an editor approving a post sees what will go out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex
from jinja2 import Environment, Template

from digest.models import SocialPostKind, Story
from digest.render import environment
from digest.social.text_rules import Length, fit, measure

_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]+")
_HASHTAG_DROP = regex.compile(r"[^\p{L}\p{N}_]+")
# Discord markdown's formatting characters, and the backslash that escapes them.
_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()-])")


@dataclass(frozen=True)
class Composed:
    text: str
    length: Length


def hashtag(section: str) -> str:
    """``World news`` → ``WorldNews``: a tag every platform links (letters, digits, _)."""
    return "".join(
        word[:1].upper() + word[1:] for word in _HASHTAG_DROP.split(section or "") if word
    )


def slack_escape(text: str) -> str:
    # Slack's "Escaping text": only these three, and only as entities.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def discord_escape(text: str) -> str:
    return _DISCORD_MARKDOWN.sub(r"\\\1", text)


def _environment() -> Environment:
    env = environment()
    # Registered on the shared environment once; the filters are pure functions.
    env.filters.setdefault("hashtag", hashtag)
    env.filters.setdefault("slack", slack_escape)
    env.filters.setdefault("discord", discord_escape)
    return env


def template(platform: str) -> Template:
    return _environment().get_template(f"social/{platform}.txt")


def _tidy(text: str) -> str:
    """Blank lines the template's optional parts left behind, collapsed."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines))


def plain(text: str) -> str:
    """One paragraph of plain text: feeds' summaries carry line breaks and runs of spaces."""
    return " ".join((text or "").split())


# A card's description: platforms cut longer ones anyway.
DESCRIPTION_MAX = 300


def excerpt(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """The text cut to at most ``limit`` characters at a word boundary, with an ellipsis; a text
    without spaces (Chinese, Japanese) is cut where the limit falls."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head[: limit - 1]).rstrip(",;: ") + "…"


def compose(
    platform: str,
    story: Story,
    url: str,
    *,
    kind: SocialPostKind,
    limit: int | None = None,
) -> Composed:
    """The post text for ``story`` linking to ``url`` (the tracked link), shortened to fit;
    raises text_rules.TooLong when even the bare template does not fit."""
    chosen = template(platform)

    def render(summary: str) -> str:
        return _tidy(
            chosen.render(
                title=plain(story.title),
                summary=summary,
                url=url,
                section=story.section,
                author=story.author,
                kind=str(kind),
            )
        )

    text = fit(platform, render, plain(story.summary), limit=limit)
    return Composed(text, measure(platform, text, limit=limit))
