"""The platforms' length rules, the Bluesky link facets, and the summary cut that makes a post fit.

X's expected values are twitter-text's own conformance cases (conformance/validate.yml,
WeightedTweetsWithDiscountedEmojiCounterTest, the v3 configuration); Mastodon's come from its
spec/validators/status_length_validator_spec.rb.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.social.text_rules import ELLIPSIS, PLATFORMS, TooLong, fit, link_facets, measure

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 👨‍👩‍👧‍👦, 7 code points
URL = "https://news.example.com/2024/05/city-council-votes-on-budget"
POEM = (
    "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。朱雀桥边野草花，乌衣巷口夕阳斜。"
    "旧时王谢堂前燕，飞入寻常百姓家。朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"
    "泪湿罗巾梦不成，夜深前殿按歌声。红颜未老恩先断，斜倚薰笼坐到明。独在异乡为异客，每逢佳节倍思亲。"
    "遥知兄弟登高处，遍插茱萸少一人。"
)
KANA = "あいうえおかきくけこ"


def graphemes(text: str) -> list[str]:
    return regex.findall(r"\X", text)


# -- X -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Hi http://test.co", 26, id="regular tweet with url"),
        pytest.param("http://test.co", 23, id="just url"),
        pytest.param("285 chars-" + "xxxxxxxxxx-" * 25, 285, id="overflow at 280"),
        pytest.param(
            "285 chars- http://www.twitter.com/jack " + "xxxxxxxxxx-" * 24,
            299,
            id="url in the middle",
        ),
        pytest.param("xxxxxxxxxx-" * 24 + " http://www.twitter.com/jack ", 289, id="url at end"),
        pytest.param("https://www.twitter.com/aloha " * 10, 240, id="ten urls"),
        pytest.param(POEM, 320, id="160 CJK characters count 2 each"),
        pytest.param("the" + POEM, 323, id="3 latin and 160 CJK"),
        pytest.param("\U0001f637" * 160, 320, id="160 emoji"),
        pytest.param(FAMILY * 140, 280, id="140 family emoji"),
        pytest.param(
            "282 chars-" + "xxxxxxxxxx-" * 24 + "xxxxxA\u0301x", 281, id="NFC before counting"
        ),
        pytest.param("A\u0301B", 2, id="A and a combining accent are one character"),
        pytest.param("A\ufb2c", 4, id="a precomposed letter NFC splits in three"),
        pytest.param("H\U0001f431\u263a" + FAMILY, 7, id="emoji mix"),
        pytest.param("\U0001f637\U0001f47e\U0001f621\U0001f525\U0001f4a9", 10, id="emoji"),
        pytest.param("\U0001f64b\U0001f3fd\U0001f468\u200d\U0001f3a4", 4, id="skin tone, ZWJ"),
        pytest.param(
            "Unicode 10.0 emoji: \U0001f92a; \U0001f9d5; \U0001f9d5\U0001f3fe; "
            "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
            34,
            id="unicode 10 emoji and a tag sequence flag",
        ),
        pytest.param(
            "Unicode 9.0 emoji: \U0001f920; \U0001f483; \U0001f483\U0001f3fe",
            29,
            id="unicode 9 emoji",
        ),
        pytest.param(
            "This is a tweet with general punctuation characters: "
            "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b"
            " ‐ ‑ ‒ – — ― ‖  ‗ ‘ ’ ‚ ‛ “ ” „ ‟ ′ ″ ‴ ‵ ‶ ‷",
            110,
            id="general punctuation weighs 1",
        ),
        pytest.param(
            "randomurl" * 7 + "s.com", 68, id="a 64-character label is no domain, counts as text"
        ),
        pytest.param(
            KANA * 12 + " http://" + KANA * 5 + "あいう.com",
            358,
            id="host over 63 punycode characters is no link",
        ),
        pytest.param(
            KANA * 12 + " http://" + KANA * 5 + "あい.com",
            264,
            id="host within 63 punycode characters is a link",
        ),
        pytest.param(
            "\u2066\u202ahttp://foobar.پاکستان/\u202c\u2069",
            31,
            id="directional marks around an IDN link",
        ),
        pytest.param("Test https://test.com test https://test.com test.com test", 86, id="urls"),
        pytest.param("test.com", 23, id="a bare domain is a link"),
    ],
)
def test_x_counts_as_twitter_text_conformance_cases(text: str, expected: int) -> None:
    assert measure("x", text).value == expected


def test_x_limit_is_280_weighted_characters() -> None:
    at_limit = measure("x", FAMILY * 140)
    assert (at_limit.value, at_limit.limit, at_limit.unit) == (280, 280, "weighted characters")
    assert at_limit.fits
    assert not measure("x", FAMILY * 140 + "a").fits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The sentence's full stop and the closing parenthesis are not part of the link.
        ("Read it: https://example.com/story.", 9 + 23 + 1),
        ("(see https://example.com/story)", 5 + 23 + 1),
        ("(see https://en.wikipedia.org/wiki/Mercury_(planet))", 5 + 23 + 1),
        ("https://example.com/search?q=budget&page=2!", 23 + 1),
        ("Bought on Amazon.com today", 10 + 23 + 6),
        ("ASP.NET", 23),
        ("node.js", 7),
        ("http://localhost/admin", 22),
        ("mail alice@example.com", 22),
        ("日本語example.com/path です", 6 + 23 + 5),
        # A scheme right after the first character: the scan must move on, not loop.
        ("日https://example.com", 2 + 23),
        ("日https://notatld", 2 + 15),
        ("©", 1),
        ("©\ufe0f", 2),
        ("1\ufe0f\u20e3", 2),
        ("…", 2),
    ],
)
def test_x_links_emoji_and_symbols(text: str, expected: int) -> None:
    assert measure("x", text).value == expected


def test_x_problem_says_what_is_over_and_by_how_much() -> None:
    length = measure("x", "a" * 273 + " " + URL)
    assert length.value == 297
    assert not length.fits
    assert length.problems == (
        "X: 297 of 280 weighted characters, 17 too many (URLs count 23 each)",
    )


def test_x_limit_can_be_raised_for_longer_posts() -> None:
    assert measure("x", "a" * 1000, limit=25_000).fits


# -- Mastodon ------------------------------------------------------------------------------------


def test_mastodon_counts_urls_as_23() -> None:
    text = "a" * 476 + " http://" + "b" * 30 + ".com/example"
    length = measure("mastodon", text)
    assert (length.value, length.limit, length.unit) == (500, 500, "graphemes")
    assert length.fits


def test_mastodon_counts_only_the_local_part_of_remote_mentions() -> None:
    assert measure("mastodon", "a" * 475 + " @alice@" + "b" * 30 + ".com").value == 482


def test_mastodon_counts_graphemes_and_skips_bare_domains() -> None:
    # Mastodon links only URLs with a scheme; a family emoji is one grapheme.
    assert measure("mastodon", f"{FAMILY} example.com e\u0301").value == 1 + 1 + 11 + 1 + 1


def test_mastodon_url_ends_before_trailing_punctuation_and_mention_inside_url_is_not_one() -> None:
    assert (
        measure("mastodon", "See https://mastodon.social/@alice@example.com.").value == 4 + 23 + 1
    )


def test_mastodon_takes_the_instance_limit() -> None:
    text = "a" * 600
    assert not measure("mastodon", text).fits
    length = measure("mastodon", text, limit=5000)
    assert length.fits and length.limit == 5000


# -- Bluesky -------------------------------------------------------------------------------------


def test_bluesky_300_grapheme_boundary() -> None:
    text = "e\u0301" * 300  # 300 graphemes, 600 code points, 900 bytes
    length = measure("bluesky", text)
    assert length.fits
    assert (length.value, length.limit, length.unit) == (300, 300, "graphemes")
    over = measure("bluesky", text + "!")
    assert over.problems == ("Bluesky: 301 of 300 graphemes, 1 too many (links count as written)",)


def test_bluesky_3000_byte_boundary() -> None:
    text = FAMILY * 120  # 120 graphemes of 25 UTF-8 bytes each
    length = measure("bluesky", text)
    assert [(c.value, c.limit, c.unit) for c in length.checks] == [
        (120, 300, "graphemes"),
        (3000, 3000, "UTF-8 bytes"),
    ]
    assert length.fits
    over = measure("bluesky", text + "a")
    assert not over.fits
    assert over.problems == (
        "Bluesky: 3,001 of 3,000 UTF-8 bytes, 1 too many (links count as written)",
    )


def test_bluesky_counts_links_as_written() -> None:
    assert measure("bluesky", URL).value == len(URL)


def test_link_facets_are_at_utf8_byte_offsets_after_emoji_and_cjk() -> None:
    text = f"速報 🎉 {URL} ✔"
    (facet,) = link_facets(text)
    start = len("速報 🎉 ".encode())
    assert start == 12
    assert facet == {
        "index": {"byteStart": start, "byteEnd": start + len(URL)},
        "features": [{"$type": "app.bsky.richtext.facet#link", "uri": URL}],
    }
    assert text.encode()[start : start + len(URL)].decode() == URL


def test_link_facets_leave_out_sentence_punctuation_and_unopened_parentheses() -> None:
    text = (
        "Lire (https://a.example/x_(y)) puis ünï https://b.example/ü?q=1. Fin 🎉 http://c.example"
    )
    facets = link_facets(text)
    uris = [facet["features"][0]["uri"] for facet in facets]
    assert uris == ["https://a.example/x_(y)", "https://b.example/ü?q=1", "http://c.example"]
    encoded = text.encode()
    for facet, uri in zip(facets, uris, strict=True):
        index = facet["index"]
        assert encoded[index["byteStart"] : index["byteEnd"]].decode() == uri


def test_link_facets_need_a_link_that_starts_a_word() -> None:
    assert link_facets("no link here, example.com, xhttps://a.example") == []


# -- Telegram, Threads and the plain character limits --------------------------------------------


def test_telegram_counts_utf16_code_units() -> None:
    assert measure("telegram", "🎉").value == 2
    assert measure("telegram", "é日").value == 2
    length = measure("telegram", "a" * 4094 + "🎉")
    assert (length.value, length.limit, length.unit) == (4096, 4096, "UTF-16 code units")
    assert length.fits
    assert not measure("telegram", "a" * 4095 + "🎉").fits


def test_telegram_caption_limit_is_1024() -> None:
    assert measure("telegram", "a" * 1024, caption=True).fits
    caption = measure("telegram", "a" * 1023 + "🎉", caption=True)
    assert caption.problems == (
        "Telegram: 1,025 of 1,024 UTF-16 code units, 1 too many (most emoji count 2)",
    )


def test_threads_counts_emoji_as_utf8_bytes() -> None:
    assert measure("threads", "🎉").value == 4
    assert measure("threads", FAMILY).value == 25
    assert measure("threads", "a" * 496 + "🎉").fits
    assert not measure("threads", "a" * 497 + "🎉").fits


@pytest.mark.parametrize(
    ("platform", "limit"),
    [("facebook", 63_206), ("linkedin", 3_000), ("discord", 2_000), ("slack", 40_000)],
)
def test_character_limits(platform: str, limit: int) -> None:
    length = measure(platform, "é" * limit)
    assert (length.value, length.limit, length.unit) == (limit, limit, "characters")
    assert length.fits
    assert not measure(platform, "é" * (limit + 1)).fits


def test_caption_uses_the_post_limit_where_the_platform_has_no_other() -> None:
    assert measure("x", "a", caption=True).limit == 280


def test_unknown_platform_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown platform 'myspace'") as error:
        measure("myspace", "hello")
    assert all(platform in str(error.value) for platform in PLATFORMS)
    assert set(PLATFORMS) == {
        *("mastodon", "bluesky", "x", "telegram", "facebook", "linkedin", "threads"),
        *("discord", "slack"),
    }


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        measure("mastodon", "hello", limit=0)


# -- fit -----------------------------------------------------------------------------------------


def template(title: str) -> Callable[[str], str]:
    return lambda summary: f"{title}\n{summary}\n{URL}"


def test_fit_returns_the_text_unchanged_when_it_fits() -> None:
    render = template("Budget passes")
    assert fit("x", render, "A short summary.") == render("A short summary.")


def test_fit_cuts_at_a_word_boundary_and_keeps_the_link() -> None:
    render = template("Council passes budget")
    summary = "The city council approved the budget late on Tuesday after a long debate. " * 10
    text = fit("x", render, summary)
    assert measure("x", text).fits
    assert text.startswith("Council passes budget\n") and text.endswith("\n" + URL)
    cut = text.split("\n")[1]
    assert cut.endswith(ELLIPSIS)
    kept = cut.removesuffix(ELLIPSIS)
    assert summary.startswith(kept)
    assert summary[len(kept)] in " ."  # the cut ends a word
    # One more word would not have fitted.
    words = summary.split(" ")
    longer = " ".join(words[: len(kept.split(" ")) + 1]).rstrip(".,") + ELLIPSIS
    assert not measure("x", render(longer)).fits


def test_fit_reaches_the_limit_exactly_when_it_can() -> None:
    # 254 x, "…" (2 on X), a newline and the link (23): exactly 280.
    text = fit("x", lambda summary: f"{summary}\n{URL}", "x" * 1000)
    assert text == "x" * 254 + ELLIPSIS + "\n" + URL
    assert measure("x", text).value == 280


def test_fit_never_splits_a_zwj_emoji() -> None:
    text = fit("bluesky", template("Emoji"), FAMILY * 400)
    cut = text.split("\n")[1]
    assert cut == FAMILY * (len(graphemes(cut)) - 1) + ELLIPSIS
    assert measure("bluesky", text).fits


def test_fit_cuts_text_without_spaces_at_grapheme_boundaries() -> None:
    text = fit("x", template("速報"), POEM * 3)
    cut = text.split("\n")[1]
    assert cut.endswith(ELLIPSIS)
    assert POEM.startswith(cut.removesuffix(ELLIPSIS))
    assert measure("x", text).value >= 278  # CJK weighs 2: at most one character short


def test_fit_raises_when_the_template_alone_is_too_long() -> None:
    render = template("A" * 300)
    with pytest.raises(TooLong) as error:
        fit("x", render, "Summary.")
    message = str(error.value)
    assert message == (
        "X: 325 of 280 weighted characters, 45 too many (URLs count 23 each), "
        "even with the summary left out"
    )
    assert error.value.length.value == 325


def test_fit_measures_a_few_times_not_once_per_character() -> None:
    calls = []

    def render(summary: str) -> str:
        calls.append(summary)
        return f"{summary}\n{URL}"

    fit("mastodon", render, "word " * 20_000)
    assert len(calls) <= 22


def test_long_text_without_spaces_is_measured_in_linear_time() -> None:
    # Run naively, twitter-text's URL pattern retries a run of CJK text (no ASCII punctuation,
    # so all of it could be a host name) from each of its characters, up to the one ".": about
    # a minute for this summary, which is cut in well under a second.
    summary = "日本語の記事の要約、増加しました。" * 1200 + "詳しくは3.5を参照"
    started = time.monotonic()
    text = fit("x", template("速報"), summary)
    assert measure("x", text).fits
    assert time.monotonic() - started < 5


def test_fit_with_an_instance_limit() -> None:
    text = fit("mastodon", template("Title"), "word " * 400, limit=1000)
    # At most one word short of the limit.
    assert 995 <= measure("mastodon", text).value <= 1000


PIECES = st.sampled_from(
    [
        "word",
        " ",
        "  ",
        "日本語",
        FAMILY,
        "🇩🇪",
        "🙋🏽",
        "e\u0301",
        "é",
        "\u200d",
        "—",
        ".",
        ",",
        "(",
        ")",
        "…",
        "example.com",
        "https://a.example/x",
        "@alice@example.social",
        "\n",
        "©",
        "1\ufe0f\u20e3",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    platform=st.sampled_from(PLATFORMS),
    # Limits and lengths chosen so that most examples need a cut.
    limit=st.integers(min_value=40, max_value=250),
    title=st.text(max_size=40),
    summary=st.lists(st.one_of(PIECES, st.text(max_size=4)), min_size=20, max_size=150).map(
        "".join
    ),
)
def test_fit_output_always_fits_and_keeps_the_link(
    platform: str, limit: int, title: str, summary: str
) -> None:
    def render(text: str) -> str:
        return f"{title}\n{text}\n{URL}"

    try:
        text = fit(platform, render, summary, limit=limit)
    except TooLong:
        assert not measure(platform, render(""), limit=limit).fits
        return
    assert measure(platform, text, limit=limit).fits
    assert URL in text
    assert text.startswith(title + "\n") and text.endswith("\n" + URL)
    kept = text[len(title) + 1 : -len(URL) - 1]
    if kept != summary:
        prefix = kept.removesuffix(ELLIPSIS)
        assert summary.startswith(prefix)
        boundaries = {0, *(match.end() for match in regex.finditer(r"\X", summary))}
        assert len(prefix) in boundaries
