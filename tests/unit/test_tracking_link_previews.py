"""Who gets a story's card page instead of the redirect, and that none of them is a reader."""

from __future__ import annotations

import pytest

from digest.models import ClickKind, utcnow
from digest.social.compose import DESCRIPTION_MAX, excerpt
from digest.tracking import builds_link_preview, classify_click

# As the crawlers send them.
CRAWLERS = [
    "Twitterbot/1.0",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Facebot",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "TelegramBot (like TwitterBot)",
    "WhatsApp/2.23.20.0 A",
    "Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
    "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
    "http.rb/5.1.1 (Mastodon/4.2.10; +https://mastodon.social/)",
    "http.rb/4.4.1 (Mastodon/3.5.3+glitch; +https://glitch.social/)",
    # iMessage draws its previews under both names.
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) "
    "Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
]
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
# People: browsers, and the platforms' in-app browsers, which name the app but are a reader.
PEOPLE = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    IPHONE + "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    IPHONE + "(KHTML, like Gecko) Mobile/15E148 Twitter for iPhone/10.48",
    IPHONE + "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.36.103;FBBV/62]",
    IPHONE + "(KHTML, like Gecko) Mobile/15E148 [LinkedInApp]/9.29.8866",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.71 Mobile Safari/537.36 Telegram-Android/10.14.5 (Google Pixel 8)",
    "",
]


@pytest.mark.parametrize("agent", CRAWLERS)
def test_link_preview_crawlers_get_the_card_and_count_as_bots(agent: str) -> None:
    assert builds_link_preview(agent)
    # A shared link has no delivery, so nothing but the agent can tell the crawler apart.
    assert classify_click(agent, utcnow(), None) == ClickKind.BOT


@pytest.mark.parametrize("agent", PEOPLE)
def test_people_and_in_app_browsers_get_the_redirect(agent: str) -> None:
    assert not builds_link_preview(agent)


def test_a_short_summary_is_kept_whole_with_its_spacing_collapsed() -> None:
    assert excerpt("  One   story,\n\ttold  briefly. ") == "One story, told briefly."
    exact = "x" * DESCRIPTION_MAX
    assert excerpt(exact) == exact


def test_a_long_summary_is_cut_at_a_word_boundary() -> None:
    text = " ".join(f"word{n}," for n in range(200))
    cut = excerpt(text)
    assert len(cut) <= DESCRIPTION_MAX and cut.endswith("…")
    # Whole words only, and no dangling comma before the ellipsis.
    assert text.startswith(cut[:-1]) and text[len(cut) - 1] == ","
    assert cut[-2].isdigit()


def test_a_summary_without_spaces_is_cut_at_the_limit() -> None:
    cut = excerpt("報道" * 400)
    assert len(cut) == DESCRIPTION_MAX and cut == "報道" * 149 + "報…"
