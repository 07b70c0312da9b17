"""Each platform's length rule, counted the way the platform counts, and the summary cut that
makes a post fit.

A social post is rendered from a per-platform template that places the story's title, summary
and link. When the post is scheduled its text is measured with the platform's own rule; if it is
too long, ``fit`` shortens the summary, and only the summary (the link and the rest of the
template are never cut), at a word boundary, ending it with "…". A text that cannot be made to
fit raises ``TooLong``, whose message tells the editor what is over and by how much.

Where a platform publishes the code that counts (X's twitter-text, Mastodon's validator,
Bluesky's lexicons) the rule follows that code; where it publishes only a number, the comment on
the rule says what was found and where, and whatever the documents leave open is counted
generously, so that a post we pass is not refused.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import regex

ELLIPSIS = "…"


@dataclass(frozen=True)
class Check:
    """One count against one limit, in one unit."""

    value: int
    limit: int
    unit: str

    @property
    def over(self) -> int:
        return max(0, self.value - self.limit)


@dataclass(frozen=True)
class Length:
    """A text measured by one platform's rule. ``checks`` holds one check per limit the
    platform enforces (Bluesky has two: graphemes and UTF-8 bytes); ``value``, ``limit`` and
    ``unit`` are those of the first, the one editors know."""

    platform: str
    checks: tuple[Check, ...]
    # How the platform counts, in the editor's words, e.g. "URLs count 23 each".
    note: str = ""

    @property
    def value(self) -> int:
        return self.checks[0].value

    @property
    def limit(self) -> int:
        return self.checks[0].limit

    @property
    def unit(self) -> str:
        return self.checks[0].unit

    @property
    def fits(self) -> bool:
        return all(check.over == 0 for check in self.checks)

    @property
    def problems(self) -> tuple[str, ...]:
        """One sentence per limit that is exceeded, e.g.
        "X: 297 of 280 weighted characters, 17 too many (URLs count 23 each)"."""
        name = _RULES[self.platform].name
        note = f" ({self.note})" if self.note else ""
        return tuple(
            f"{name}: {c.value:,} of {c.limit:,} {c.unit}, {c.over:,} too many{note}"
            for c in self.checks
            if c.over
        )


class TooLong(Exception):
    """The text does not fit and cannot be made to; ``length`` is its measure."""

    def __init__(self, length: Length, *, context: str = "") -> None:
        self.length = length
        message = "; ".join(length.problems)
        super().__init__(f"{message}, {context}" if context else message)


def measure(platform: str, text: str, *, limit: int | None = None, caption: bool = False) -> Length:
    """Count ``text`` as ``platform`` does. ``limit`` replaces the platform's main limit (a
    Mastodon instance's ``configuration.statuses.max_characters``, an X account with longer
    posts); ``caption`` selects the limit for text sent with media where the platform has a
    different one (Telegram)."""
    rule = _rule(platform)
    if limit is not None and limit < 1:
        raise ValueError(f"a length limit must be positive, not {limit}")
    main, *others = rule.limits
    default = rule.caption_limit if caption and rule.caption_limit else main.limit
    checks = (
        Check(main.count(text), default if limit is None else limit, main.unit),
        *(Check(other.count(text), other.limit, other.unit) for other in others),
    )
    return Length(platform, checks, rule.note)


def fit(
    platform: str,
    render: Callable[[str], str],
    summary: str,
    *,
    limit: int | None = None,
    caption: bool = False,
) -> str:
    """The post text ``render(summary)`` for the longest summary that fits ``platform``.

    ``render`` places title, summary and link in the template. A summary that does not fit is
    cut at the last word boundary that fits (at a grapheme boundary when no word boundary
    does), never inside a grapheme cluster, and ends with "…". Raises ``TooLong`` when even no
    summary at all does not fit: the link and the rest of the template are never cut.
    """

    def attempt(cut: int) -> tuple[str, Length]:
        text = render(_shortened(summary, cut))
        return text, measure(platform, text, limit=limit, caption=caption)

    text, length = attempt(len(summary))
    if length.fits:
        return text
    bare, length = attempt(0)
    if not length.fits:
        raise TooLong(length, context="even with the summary left out")

    # Binary search over grapheme boundaries: cuts[lo] always fits, cuts[hi] never does.
    # A few renders, not one per character, and no cut can split a cluster.
    cuts = [0, *(match.end() for match in _GRAPHEME.finditer(summary))]
    lo, hi, best = 0, len(cuts) - 1, bare
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text, length = attempt(cuts[mid])
        if length.fits:
            lo, best = mid, text
        else:
            hi = mid
    # Back off to the last word boundary before the cut, if there is one. The shorter text
    # nearly always fits, but a link-like word cut short can count differently: measure it.
    word_end = max(
        (match.start() for match in _WORD_BOUNDARY.finditer(summary) if match.start() <= cuts[lo]),
        default=0,
    )
    if 0 < word_end < cuts[lo] and _shortened(summary, word_end):
        text, length = attempt(word_end)
        if length.fits:
            return text
    return best


def link_facets(text: str) -> list[dict[str, Any]]:
    """An ``app.bsky.richtext.facet`` link for every http(s) URL in ``text``.

    Bluesky does not find links in a post itself: the client says where they are, as UTF-8
    byte offsets ("Indices are zero-indexed, counting bytes of the UTF-8 encoded text",
    app.bsky.richtext.facet#byteSlice). Sentence punctuation after a URL, and a closing
    parenthesis the URL did not open, are not part of it.
    """
    facets = []
    for match in _BLUESKY_URL.finditer(text):
        url = _trim_url(match[0])
        start = _utf8_length(text[: match.start()])
        facets.append(
            {
                "index": {"byteStart": start, "byteEnd": start + _utf8_length(url)},
                "features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
            }
        )
    return facets


# -- Counting -----------------------------------------------------------------------------------

_GRAPHEME = regex.compile(r"\X")
# Unicode (UAX #29) word boundaries: between words, and between CJK ideographs.
_WORD_BOUNDARY = regex.compile(r"\b", regex.WORD)
# Left at the end of a cut summary these read badly before "…". Searched for from the end, so
# that a long run of them inside the summary is not rescanned from each of its characters.
_CUT_TRAILING = regex.compile(r"[\s\p{Pd}\p{Ps}\p{Pi},;:.…]+\Z", regex.REVERSE)

# An emoji as one unit: a flag, a keycap, or a pictograph with its skin tone, presentation
# selector or tag sequence, joined by ZWJs to further pictographs (the shape UTS #51 gives in
# "EBNF and Regex"). © and ® are emoji only with U+FE0F, as in twitter-text's pattern. Any ZWJ
# chain counts as one emoji, where twitter-text lists the sequences Unicode recommended in 2019:
# a newer one (🧑‍🧑‍🧒) may count part by part on X.
_EMOJI = (
    r"\p{RI}\p{RI}"
    r"|[#*0-9]\uFE0F?\u20E3"
    r"|(?![©®](?!\uFE0F))\p{ExtPict}(?:\p{EMod}|\uFE0F|[\U000E0020-\U000E007E]+\U000E007F)?"
    r"(?:\u200D\p{ExtPict}(?:\p{EMod}|\uFE0F)?)*"
)
_EMOJI_OR_CODE_POINT = regex.compile(rf"(?P<emoji>{_EMOJI})|.", regex.DOTALL)


def _graphemes(text: str) -> int:
    return sum(1 for _ in _GRAPHEME.finditer(text))


def _utf8_length(text: str) -> int:
    # surrogatepass: a stray surrogate is counted, not a crash.
    return len(text.encode("utf-8", "surrogatepass"))


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _shortened(summary: str, cut: int) -> str:
    if cut >= len(summary):
        return summary
    kept = summary[:cut]
    if trailing := _CUT_TRAILING.search(kept):
        kept = kept[: trailing.start()]
    return kept + ELLIPSIS if kept else ""


# X: twitter-text v3 (config/v3.json: maxWeightedTweetLength 280, scale 100, defaultWeight 200,
# emojiParsingEnabled, transformedURLLength 23, and four ranges of weight 100), as parseTweet
# applies it: NFC first; each URL weighs 23, each emoji 2, a code point in the ranges 1 and any
# other code point 2.
_X_LIGHT_RANGES = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
_X_URL_WEIGHT = 23


def _x_length(text: str) -> int:
    text = unicodedata.normalize("NFC", text)
    total, position = 0, 0
    for start, end in _x_urls(text):
        total += _x_weight(text[position:start]) + _X_URL_WEIGHT
        position = end
    return total + _x_weight(text[position:])


def _x_weight(text: str) -> int:
    total = 0
    for match in _EMOJI_OR_CODE_POINT.finditer(text):
        if match["emoji"]:
            total += 2
        else:
            point = ord(match[0])
            total += 1 if any(low <= point <= high for low, high in _X_LIGHT_RANGES) else 2
    return total


# Mastodon: app/validators/status_length_validator.rb counts `str.mb_chars.grapheme_length`,
# grapheme clusters, after rewriting the text: each URL with a scheme becomes 23 characters
# (URL_PLACEHOLDER_CHARS) and each mention @user@domain becomes @user. Entities that overlap an
# earlier one are dropped first (Extractor.remove_overlapping_entities).
_MASTODON_URL_PLACEHOLDER = "x" * 23


def _mastodon_length(text: str) -> int:
    entities = sorted(
        [
            *((start, end, _MASTODON_URL_PLACEHOLDER) for start, end in _mastodon_urls(text)),
            *((start, end, "@" + user) for start, end, user in _mastodon_mentions(text)),
        ]
    )
    parts, position = [], 0
    for start, end, replacement in entities:
        if start < position:
            continue
        parts += [text[position:start], replacement]
        position = end
    parts.append(text[position:])
    return _graphemes("".join(parts))


# Threads: "Text posts are limited to 500 characters. Emojis are counted as the number of UTF-8
# bytes." (developers.facebook.com/documentation/threads/posts, Limitations). Links are not
# mentioned, so they count as written. "Characters" is read as code points, and a whole emoji
# sequence as its UTF-8 bytes (👨‍👩‍👧‍👦 is 25).
def _threads_length(text: str) -> int:
    return sum(
        _utf8_length(match[0]) if match["emoji"] else 1
        for match in _EMOJI_OR_CODE_POINT.finditer(text)
    )


# -- The rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limit:
    unit: str
    limit: int
    count: Callable[[str], int]


@dataclass(frozen=True)
class _Rule:
    name: str
    limits: tuple[_Limit, ...]
    note: str = ""
    caption_limit: int | None = None


_RULES: dict[str, _Rule] = {
    "mastodon": _Rule(
        "Mastodon",
        # 500 is the default; an instance reports its own in GET /api/v2/instance
        # configuration.statuses.max_characters, passed in as `limit`. (The 23 per URL it also
        # reports is a constant in the validator.)
        (_Limit("graphemes", 500, _mastodon_length),),
        note="URLs count 23 each, @user@domain counts as @user",
    ),
    "bluesky": _Rule(
        "Bluesky",
        # lexicons/app/bsky/feed/post.json: text {maxLength: 3000, maxGraphemes: 300}; a
        # lexicon string's maxLength is in UTF-8 bytes (@atproto/lexicon validates
        # utf8Len(value) > maxLength). Links are not shortened: they count as written.
        (
            _Limit("graphemes", 300, _graphemes),
            _Limit("UTF-8 bytes", 3000, _utf8_length),
        ),
        note="links count as written",
    ),
    "x": _Rule(
        "X",
        (_Limit("weighted characters", 280, _x_length),),
        note="URLs count 23 each",
    ),
    "telegram": _Rule(
        "Telegram",
        # Bot API sendMessage: "Text of the message to be sent, 1-4096 characters after entities
        # parsing"; captions "0-1024 characters after entities parsing". Telegram counts in
        # UTF-16 code units (MessageEntity offsets and lengths are in them). The plain text is
        # counted: markup sent as parse_mode would be stripped first.
        (_Limit("UTF-16 code units", 4096, _utf16_length),),
        note="most emoji count 2",
        caption_limit=1024,
    ),
    "facebook": _Rule(
        "Facebook",
        # The Graph API documents no number; 63,206 characters is the limit Facebook's composer
        # enforces and every publishing tool cites.
        (_Limit("characters", 63206, len),),
    ),
    "linkedin": _Rule(
        "LinkedIn",
        # Posts API `commentary`: 3,000 characters (LinkedIn's publishing partners' documents).
        # The text is counted as written, before the client escapes "little" text format's
        # reserved characters.
        (_Limit("characters", 3000, len),),
    ),
    "threads": _Rule(
        "Threads",
        (_Limit("characters", 500, _threads_length),),
        note="emoji count their UTF-8 bytes",
    ),
    "discord": _Rule(
        "Discord",
        # Execute Webhook `content`: "the message contents (up to 2000 characters)"; the API
        # counts code points (its staff, discord-api-docs issue #1315).
        (_Limit("characters", 2000, len),),
    ),
    "slack": _Rule(
        "Slack",
        # chat.postMessage `text`: Slack truncates messages over 40,000 characters rather than
        # refusing them (changelog 2018-04, "truncating really long messages"), so fitting here
        # is what keeps the link. A section block's text is limited to 3,000 instead.
        (_Limit("characters", 40000, len),),
        note="Slack cuts longer text off",
    ),
}

PLATFORMS = tuple(_RULES)


def _rule(platform: str) -> _Rule:
    try:
        return _RULES[platform]
    except KeyError:
        raise ValueError(
            f"unknown platform {platform!r}; known platforms: {', '.join(PLATFORMS)}"
        ) from None


# -- Links ----------------------------------------------------------------------------------------

# What X and Mastodon take for a link is twitter-text's URL pattern (Mastodon redefines the path
# and query characters in config/initializers/twitter_regex.rb). A link must end in a top-level
# domain from the list below, every label of its host must fit DNS's 63 characters once
# punycode-encoded, and it must not follow a letter, digit, @, $ or #.
_PUNCTUATION = r"!'#%&()*+,\\\-./:;<=>?@\[\]^_{|}~$"
_SPACES = r"\x09-\x0D\x20\x85\xA0\u1680\u180E\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
_INVALID = r"\uFFFE\uFEFF\uFFFF"
_DIRECTIONAL = r"\u202A-\u202E\u061C\u200E\u200F\u2066-\u2069"
_LATIN_ACCENTS = (
    r"\xC0-\xD6\xD8-\xF6\xF8-\xFF\u0100-\u024F\u0253\u0254\u0256\u0257\u0259\u025B\u0263\u0268"
    r"\u026F\u0272\u0289\u028B\u02BB\u0300-\u036F\u1E00-\u1EFF"
)
_BEFORE_CHAR = rf"(?:[^A-Za-z0-9@＠$#＃{_INVALID}]|[{_DIRECTIONAL}])"
_DOMAIN_CHAR = rf"[^{_PUNCTUATION}{_SPACES}{_INVALID}{_DIRECTIONAL}]"
# A label is domain characters with "-" (and in subdomains "_") inside, never at either end.
# Possessive: a label that is not followed by "." is no label at any shorter length either.
_SUBDOMAIN = rf"(?:{_DOMAIN_CHAR}(?:[_-]*{_DOMAIN_CHAR})*+\.)"
_DOMAIN_NAME = rf"(?:{_DOMAIN_CHAR}(?:-*{_DOMAIN_CHAR})*+\.)"
_PUNYCODE = r"(?:xn--[\-0-9a-z]+)"
_IDN_DOTS = regex.compile("[\u3002\uff0e\uff61]")


def _url_pattern(scheme: str, path_char: str, path_end: str, query: str, query_end: str) -> str:
    # Parentheses in a path must balance, one level deep, so "(see https://x.com/a)" stops
    # before ")". (The second path form of twitter-text and Mastodon, "@chars/" and "chars/",
    # is a case of the first.)
    parens = rf"\((?:{path_char}+|{path_char}*\({path_char}+\){path_char}*)\)"
    path = rf"(?:{path_char}*(?:{parens}{path_char}*)*(?:{path_end}|{parens}))"
    return (
        rf"(?P<before>{_BEFORE_CHAR}|^)"
        rf"(?P<url>(?P<scheme>{scheme})(?P<domain>{_SUBDOMAIN}*{_DOMAIN_NAME}"
        rf"(?:{_TLD_PATTERN}|{_PUNYCODE}))(?::[0-9]+)?(?P<path>/{path}*)?"
        rf"(?:\?{query}*{query_end})?)"
    )


def _valid_host(domain: str) -> bool:
    """Each label, punycode-encoded as punycode.js does it (no nameprep; ideographic full
    stops separate parts), is 1 to 63 characters: twitter-text's idna.toAscii check."""
    for label in domain.split("."):
        encoded = ".".join(
            part if part.isascii() else "xn--" + part.encode("punycode").decode("ascii")
            for part in _IDN_DOTS.split(label)
        )
        if not 0 < len(encoded) <= 63:
            return False
    return True


def _x_urls(text: str) -> Iterator[tuple[int, int]]:
    """twitter-text's extractUrlsWithIndices: links with a scheme, and host names without one,
    of which only the ASCII part counts (so "日本example.com" links "example.com")."""
    if "." not in text:
        return
    for match in _x_url_matches(text):
        if not _valid_host(match["domain"]):
            continue
        if match["scheme"]:
            yield match.span("url")
            continue
        if _NO_BARE_URL_AFTER.search(match["before"]):
            continue
        start = match.start("domain")
        spans = [
            (start + ascii_domain.start(), start + ascii_domain.end())
            for ascii_domain in _X_ASCII_DOMAIN.finditer(match["domain"])
        ]
        if spans and match["path"]:
            spans[-1] = (spans[-1][0], match.end("url"))
        yield from spans


def _x_url_matches(text: str) -> Iterator[regex.Match[str]]:
    """What ``_X_URL.finditer`` finds, without its quadratic time on long runs of letters
    without spaces (CJK text): when the pattern fails for a link starting inside a run of
    domain characters, it fails for every later start in that run too (the host only gets a
    shorter first label), so the scan moves past the run, stopping only where a scheme
    starts in it."""
    position = 0
    while position < len(text):
        match = _X_URL.match(text, position)
        if match:
            yield match
            position = match.end()
            continue
        # The attempt at `position` tried links starting at `first` and `position + 1` (the
        # pattern's `before` takes one character, or none at the very start of the text).
        first = 0 if position == 0 else position + 1
        run = _DOMAIN_RUN.match(text, first)
        if run is None or not (position == 0 or _URL_BEFORE.match(text, position)):
            position += 1
            continue
        scheme = _SCHEME_ENDING.search(text, position + 2, run.end() + 3)
        position = scheme.start() - 1 if scheme else run.end()


def _mastodon_urls(text: str) -> Iterator[tuple[int, int]]:
    if ":" not in text:
        return
    for match in _MASTODON_URL.finditer(text):
        if _valid_host(match["domain"]):
            yield match.span("url")


def _mastodon_mentions(text: str) -> Iterator[tuple[int, int, str]]:
    """Extractor.extract_mentions_or_lists_with_indices: Account::MENTION_RE, skipping a match
    that twitter-text's end_mention_match says runs on (into "@", an accented letter or
    "://"), rather than taking a shorter one."""
    if "@" not in text:
        return
    for match in _MASTODON_MENTION.finditer(text):
        if not _MENTION_RUNS_ON.match(text, match.end()):
            yield match.start(), match.end(), match["user"]


_MASTODON_MENTION = regex.compile(
    r"(?<![=/\w])@(?P<user>[a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?)(?:@[\w.-]+\w+)?",
    regex.IGNORECASE,
)
_MENTION_RUNS_ON = regex.compile(rf"[@＠{_LATIN_ACCENTS}]|://")

# Bluesky's own app (@atproto/api detectFacets) links http(s) URLs at the start of a word or
# after "(".
_BLUESKY_URL = regex.compile(r"(?<![^\s(])https?://\S+")
_URL_TRAILING = ".,;:!?'\"”’»"


def _trim_url(url: str) -> str:
    while True:
        trimmed = url.rstrip(_URL_TRAILING)
        if trimmed.endswith(")") and trimmed.count(")") > trimmed.count("("):
            trimmed = trimmed[:-1]
        if trimmed == url:
            return url
        url = trimmed


# Top-level domains: the ICANN section of the Public Suffix List (20230209), IDNs as A-labels.
# twitter-text keeps its own copy of the same IANA list; the two differ only by TLDs retired or
# delegated since.
_TLDS = """
    aaa aarp abarth abb abbott abbvie abc able abogado abudhabi ac academy accenture accountant
    accountants aco actor ad ads adult ae aeg aero aetna af afl africa ag agakhan agency ai aig
    airbus airforce airtel akdn al alfaromeo alibaba alipay allfinanz allstate ally alsace
    alstom am amazon americanexpress americanfamily amex amfam amica amsterdam analytics android
    anquan anz ao aol apartments app apple aq aquarelle ar arab aramco archi army arpa art arte
    as asda asia associates at athleta attorney au auction audi audible audio auspost author
    auto autos avianca aw aws ax axa az azure ba baby baidu banamex bananarepublic band bank bar
    barcelona barclaycard barclays barefoot bargains baseball basketball bauhaus bayern bb bbc
    bbt bbva bcg bcn bd be beats beauty beer bentley berlin best bestbuy bet bf bg bh bharti bi
    bible bid bike bing bingo bio biz bj black blackfriday blockbuster blog bloomberg blue bm
    bms bmw bn bnpparibas bo boats boehringer bofa bom bond boo book booking bosch bostik boston
    bot boutique box br bradesco bridgestone broadway broker brother brussels bs bt build
    builders business buy buzz bv bw by bz bzh ca cab cafe cal call calvinklein cam camera camp
    canon capetown capital capitalone car caravan cards care career careers cars casa case cash
    casino cat catering catholic cba cbn cbre cbs cc cd center ceo cern cf cfa cfd cg ch chanel
    channel charity chase chat cheap chintai christmas chrome church ci cipriani circle cisco
    citadel citi citic city cityeats ck cl claims cleaning click clinic clinique clothing cloud
    club clubmed cm cn co coach codes coffee college cologne com comcast commbank community
    company compare computer comsec condos construction consulting contact contractors cooking
    cookingchannel cool coop corsica country coupon coupons courses cpa cr credit creditcard
    creditunion cricket crown crs cruise cruises cu cuisinella cv cw cx cy cymru cyou cz dabur
    dad dance data date dating datsun day dclk dds de deal dealer deals degree delivery dell
    deloitte delta democrat dental dentist desi design dev dhl diamonds diet digital direct
    directory discount discover dish diy dj dk dm dnp do docs doctor dog domains dot download
    drive dtv dubai dunlop dupont durban dvag dvr dz earth eat ec eco edeka edu education ee eg
    email emerck energy engineer engineering enterprises epson equipment er ericsson erni es esq
    estate et etisalat eu eurovision eus events exchange expert exposed express extraspace fage
    fail fairwinds faith family fan fans farm farmers fashion fast fedex feedback ferrari
    ferrero fi fiat fidelity fido film final finance financial fire firestone firmdale fish
    fishing fit fitness fj fk flickr flights flir florist flowers fly fm fo foo food foodnetwork
    football ford forex forsale forum foundation fox fr free fresenius frl frogans frontdoor
    frontier ftr fujitsu fun fund furniture futbol fyi ga gal gallery gallo gallup game games
    gap garden gay gb gbiz gd gdn ge gea gent genting george gf gg ggee gh gi gift gifts gives
    giving gl glass gle global globo gm gmail gmbh gmo gmx gn godaddy gold goldpoint golf goo
    goodyear goog google gop got gov gp gq gr grainger graphics gratis green gripe grocery group
    gs gt gu guardian gucci guge guide guitars guru gw gy hair hamburg hangout haus hbo hdfc
    hdfcbank health healthcare help helsinki here hermes hgtv hiphop hisamitsu hitachi hiv hk
    hkt hm hn hockey holdings holiday homedepot homegoods homes homesense honda horse hospital
    host hosting hot hoteles hotels hotmail house how hr hsbc ht hu hughes hyatt hyundai ibm
    icbc ice icu id ie ieee ifm ikano il im imamat imdb immo immobilien in inc industries
    infiniti info ing ink institute insurance insure int international intuit investments io
    ipiranga iq ir irish is ismaili ist istanbul it itau itv jaguar java jcb je jeep jetzt
    jewelry jio jll jm jmp jnj jo jobs joburg jot joy jp jpmorgan jprs juegos juniper kaufen
    kddi ke kerryhotels kerrylogistics kerryproperties kfh kg kh ki kia kids kim kinder kindle
    kitchen kiwi km kn koeln komatsu kosher kp kpmg kpn kr krd kred kuokgroup kw ky kyoto kz la
    lacaixa lamborghini lamer lancaster lancia land landrover lanxess lasalle lat latino latrobe
    law lawyer lb lc lds lease leclerc lefrak legal lego lexus lgbt li lidl life lifeinsurance
    lifestyle lighting like lilly limited limo lincoln linde link lipsy live living lk llc llp
    loan loans locker locus lol london lotte lotto love lpl lplfinancial lr ls lt ltd ltda lu
    lundbeck luxe luxury lv ly ma macys madrid maif maison makeup man management mango map
    market marketing markets marriott marshalls maserati mattel mba mc mckinsey md me med media
    meet melbourne meme memorial men menu merckmsd mg mh miami microsoft mil mini mint mit
    mitsubishi mk ml mlb mls mm mma mn mo mobi mobile moda moe moi mom monash money monster
    mormon mortgage moscow moto motorcycles mov movie mp mq mr ms msd mt mtn mtr mu museum music
    mutual mv mw mx my mz na nab nagoya name natura navy nba nc ne nec net netbank netflix
    network neustar new news next nextdirect nexus nf nfl ng ngo nhk ni nico nike nikon ninja
    nissan nissay nl no nokia northwesternmutual norton now nowruz nowtv np nr nra nrw ntt nu
    nyc nz obi observer office okinawa olayan olayangroup oldnavy ollo om omega one ong onion
    onl online ooo open oracle orange org organic origins osaka otsuka ott ovh pa page panasonic
    paris pars partners parts party passagens pay pccw pe pet pf pfizer pg ph pharmacy phd
    philips phone photo photography photos physio pics pictet pictures pid pin ping pink pioneer
    pizza pk pl place play playstation plumbing plus pm pn pnc pohl poker politie porn post pr
    pramerica praxi press prime pro prod productions prof progressive promo properties property
    protection pru prudential ps pt pub pw pwc py qa qpon quebec quest racing radio re read
    realestate realtor realty recipes red redstone redumbrella rehab reise reisen reit reliance
    ren rent rentals repair report republican rest restaurant review reviews rexroth rich
    richardli ricoh ril rio rip ro rocher rocks rodeo rogers room rs rsvp ru rugby ruhr run rw
    rwe ryukyu sa saarland safe safety sakura sale salon samsclub samsung sandvik
    sandvikcoromant sanofi sap sarl sas save saxo sb sbi sbs sc sca scb schaeffler schmidt
    scholarships school schule schwarz science scot sd se search seat secure security seek
    select sener services seven sew sex sexy sfr sg sh shangrila sharp shaw shell shia shiksha
    shoes shop shopping shouji show showtime si silk sina singles site sj sk ski skin sky skype
    sl sling sm smart smile sn sncf so soccer social softbank software sohu solar solutions song
    sony soy spa space sport spot sr srl ss st stada staples star statebank statefarm stc
    stcgroup stockholm storage store stream studio study style su sucks supplies supply support
    surf surgery suzuki sv swatch swiss sx sy sydney systems sz tab taipei talk taobao target
    tatamotors tatar tattoo tax taxi tc tci td tdk team tech technology tel temasek tennis teva
    tf tg th thd theater theatre tiaa tickets tienda tiffany tips tires tirol tj tjmaxx tjx tk
    tkmaxx tl tm tmall tn to today tokyo tools top toray toshiba total tours town toyota toys tr
    trade trading training travel travelchannel travelers travelersinsurance trust trv tt tube
    tui tunes tushu tv tvs tw tz ua ubank ubs ug uk unicom university uno uol ups us uy uz va
    vacations vana vanguard vc ve vegas ventures verisign versicherung vet vg vi viajes video
    vig viking villas vin vip virgin visa vision viva vivo vlaanderen vn vodka volkswagen volvo
    vote voting voto voyage vu vuelos wales walmart walter wang wanggou watch watches weather
    weatherchannel webcam weber website wedding weibo weir wf whoswho wien wiki williamhill win
    windows wine winners wme wolterskluwer woodside work works world wow ws wtc wtf xbox xerox
    xfinity xihuan xin xn--11b4c3d xn--1ck2e1b xn--1qqw23a xn--2scrj9c xn--30rr7y xn--3bst00m
    xn--3ds443g xn--3e0b707e xn--3hcrj9c xn--3pxu8k xn--42c2d9a xn--45br5cyl xn--45brj9c
    xn--45q11c xn--4dbrk0ce xn--4gbrim xn--54b7fta0cc xn--55qw42g xn--55qx5d xn--5su34j936bgsg
    xn--5tzm5g xn--6frz82g xn--6qq986b3xl xn--80adxhks xn--80ao21a xn--80aqecdr1a xn--80asehdb
    xn--80aswg xn--8y0a063a xn--90a3ac xn--90ae xn--90ais xn--9dbq2a xn--9et52u xn--9krt00a
    xn--b4w605ferd xn--bck1b9a5dre4c xn--c1avg xn--c2br7g xn--cck2b3b xn--cckwcxetd xn--cg4bki
    xn--clchc0ea0b2g2a9gcd xn--czr694b xn--czrs0t xn--czru2d xn--d1acj3b xn--d1alf xn--e1a4c
    xn--eckvdtc9d xn--efvy88h xn--fct429k xn--fhbei xn--fiq228c5hs xn--fiq64b xn--fiqs8s
    xn--fiqz9s xn--fjq720a xn--flw351e xn--fpcrj9c3d xn--fzc2c9e2c xn--fzys8d69uvgm xn--g2xx48c
    xn--gckr3f0f xn--gecrj9c xn--gk3at1e xn--h2breg3eve xn--h2brj9c xn--h2brj9c8c xn--hxt814e
    xn--i1b6b1a6a2e xn--imr513n xn--io0a7i xn--j1aef xn--j1amh xn--j6w193g xn--jlq480n2rg
    xn--jvr189m xn--kcrx77d1x4a xn--kprw13d xn--kpry57d xn--kput3i xn--l1acc xn--lgbbat1ad8j
    xn--mgb2ddes xn--mgb9awbf xn--mgba3a3ejt xn--mgba3a4f16a xn--mgba3a4fra xn--mgba7c0bbn0a
    xn--mgbaakc7dvf xn--mgbaam7a8h xn--mgbab2bd xn--mgbah1a3hjkrd xn--mgbai9a5eva00b
    xn--mgbai9azgqp6j xn--mgbayh7gpa xn--mgbbh1a xn--mgbbh1a71e xn--mgbc0a9azcg xn--mgbca7dzdo
    xn--mgbcpq6gpa1a xn--mgberp4a5d4a87g xn--mgberp4a5d4ar xn--mgbgu82a xn--mgbi4ecexp
    xn--mgbpl2fh xn--mgbqly7c0a67fbc xn--mgbqly7cvafr xn--mgbt3dhd xn--mgbtf8fl xn--mgbtx2b
    xn--mgbx4cd0ab xn--mix082f xn--mix891f xn--mk1bu44c xn--mxtq1m xn--ngbc5azd xn--ngbe9e0a
    xn--ngbrx xn--nnx388a xn--node xn--nqv7f xn--nqv7fs00ema xn--nyqy26a xn--o3cw4h xn--ogbpf8fl
    xn--otu796d xn--p1acf xn--p1ai xn--pgbs0dh xn--pssy2u xn--q7ce6a xn--q9jyb4c xn--qcka1pmc
    xn--qxa6a xn--qxam xn--rhqv96g xn--rovu88b xn--rvc1e0am3e xn--s9brj9c xn--ses554g
    xn--t60b56a xn--tckwe xn--tiq49xqyj xn--unup4y xn--vermgensberater-ctb
    xn--vermgensberatung-pwb xn--vhquv xn--vuq861b xn--w4r85el8fhu5dnra xn--w4rs40l xn--wgbh1c
    xn--wgbl6a xn--xhq521b xn--xkc2al3hye2a xn--xkc2dl3a5ee0h xn--y9a3aq xn--yfro4i67o
    xn--ygbi2ammx xn--zfr164b xxx xyz yachts yahoo yamaxun yandex ye yodobashi yoga yokohama you
    youtube yt yun za zappos zara zero zip zm zone zuerich zw
"""

_TLD_PATTERN = "(?:{})(?=[^0-9a-z@+-]|$)".format(
    "|".join(
        sorted(
            tld[4:].encode("ascii").decode("punycode") if tld.startswith("xn--") else tld
            for tld in _TLDS.split()
        )
    )
)

_X_URL = regex.compile(
    _url_pattern(
        scheme=r"(?:https?://)?",
        path_char=rf"[a-z\u0400-\u04FF0-9!*';:=+,.$/%#\[\]\-\u2013_~@|&{_LATIN_ACCENTS}]",
        path_end=rf"[+\-a-z\u0400-\u04FF0-9=_#/{_LATIN_ACCENTS}]",
        query=r"[a-z0-9!?*'@();:&=+$/%#\[\]\-_.,~|]",
        query_end=r"[a-z0-9\-_&=#/]",
    ),
    regex.IGNORECASE,
)
_X_ASCII_DOMAIN = regex.compile(
    rf"(?:[\-a-z0-9{_LATIN_ACCENTS}]+\.)+(?:{_TLD_PATTERN}|{_PUNYCODE})", regex.IGNORECASE
)
# twitter-text's invalidUrlWithoutProtocolPrecedingChars.
_NO_BARE_URL_AFTER = regex.compile(r"[-_./]$")
_URL_BEFORE = regex.compile(_BEFORE_CHAR)
_DOMAIN_RUN = regex.compile(f"{_DOMAIN_CHAR}+")
# A scheme inside a run of domain characters ends it: "://" is not made of them.
_SCHEME_ENDING = regex.compile(r"https?(?=://)", regex.IGNORECASE)

# RFC 3987's ucschar and iprivate, which Mastodon spells out as UCHARS.
_MASTODON_WIDE = r"\xA0-\uD7FF\uE000-\uFDCF\uFDF0-\uFFEF\U000E1000-\U000EFFFD" + "".join(
    rf"\U{plane:04X}0000-\U{plane:04X}FFFD" for plane in (*range(0x1, 0xE), 0xF, 0x10)
)
_MASTODON_URL = regex.compile(
    _url_pattern(
        # The validator extracts links with a scheme only (extract_url_without_protocol: false).
        scheme=r"(?:https?|dat|dweb|ipfs|ipns|ssb|gopher|gemini)://",
        path_char=r"[^\s<>()?]",
        path_end=r"[^\s()?!*\"'「」<>;:=,.$%\[\]~&|@]",
        query=rf"[a-z0-9!?*'();:&=+$/%#\[\]\-_.,~|@\^{_MASTODON_WIDE}]",
        query_end=rf"[a-z0-9_&=#/\-{_MASTODON_WIDE}]",
    ),
    regex.IGNORECASE,
)
