"""A sample news site built from a real article page's story lists (shared samples).

The demo and the tests publish these stories as RSS 2.0 feeds, one per list the site shows
("Latest Stories", "Must-Reads", "Popular Now"), with publication times relative to ``now`` so
that today's edition always has something in it. The feeds are ordinary RSS files: ingestion
reads them exactly as it reads a real site's feeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from html import escape as html_escape
from pathlib import Path
from xml.sax.saxutils import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Newsletter, Source, SourceRole
from digest.subscriptions import subscribe_active

SITE = "https://news.example.com"


@dataclass(frozen=True)
class SampleStory:
    slug: str
    title: str
    section: str
    summary: str
    minutes_ago: int

    @property
    def url(self) -> str:
        return f"{SITE}/{self.section.lower()}/{self.slug}"


_STORIES = [
    SampleStory(
        "north-korea-new-role-russia-war",
        "North Korea’s Dangerous New Role in Russia’s War: What You Need to Know",
        "ASIA",
        "The U.S. State Department says North Korean troops sent to Russia’s Kursk region have "
        "fought Ukrainian forces for the first time.",
        35,
    ),
    SampleStory(
        "707-unit-commander-confesses",
        "707 Unit Commander Confesses: ‘I Failed My Soldiers, and I’ll Accept the Consequences’",
        "POLITICS",
        "The special forces commander takes responsibility for his unit’s deployment.",
        50,
    ),
    SampleStory(
        "yoon-approval-rating-crashes",
        "Yoon’s Approval Rating Crashes: Approval Falls to 17.3%, Disapproval Rises to 79.2%",
        "POLITICS",
        "A new poll shows the president’s support at a record low.",
        95,
    ),
    SampleStory(
        "democratic-party-second-impeachment",
        "Democratic Party Leader Demands Second Impeachment After Martial Law Controversy",
        "POLITICS",
        "The opposition leader calls for a second vote in the National Assembly.",
        140,
    ),
    SampleStory(
        "zelenskyy-reveals-ukraine-losses",
        "Zelenskyy Reveals Ukraine’s Tragic Losses: 43,000 Soldiers Dead Since Russia’s Invasion",
        "WORLD",
        "Ukraine’s president gives a rare official figure for the war’s dead.",
        210,
    ),
    SampleStory(
        "trump-calls-for-ceasefire",
        "Trump Calls for Ceasefire in Ukraine, Urges Putin to Take Action Now",
        "WORLD",
        "The president-elect urges an immediate ceasefire.",
        260,
    ),
    SampleStory(
        "us-defense-secretary-cancels-trip",
        "US Defense Secretary Cancels South Korea Trip After Martial Law Drama, "
        "Heads to Japan Instead",
        "WORLD",
        "The Seoul leg of the Asia tour is dropped.",
        330,
    ),
    SampleStory(
        "kim-jong-un-achievements-2024",
        "Kim Jong Un’s Achievements in 2024: Housing, Agriculture, and Military Focused Leadership",
        "ASIA",
        "What Pyongyang counts as the year’s successes.",
        600,
    ),
    SampleStory(
        "could-president-attack-north-korea",
        "Could South Korea President Attack North Korea? Experts Fear He’ll Do Anything to Hold On",
        "DEBATE",
        "Analysts weigh the risk of escalation.",
        720,
    ),
    SampleStory(
        "saudi-price-cuts-oil-markets",
        "Saudi Arabia’s Price Cuts Send Shockwaves Through Oil Markets—Here’s Why",
        "BUSINESS",
        "Riyadh lowers prices for Asian buyers.",
        800,
    ),
    SampleStory(
        "park-myong-jin-three-gold-medals",
        "North Korea's Park Myong Jin Crushes Competition, Wins Three Gold Medals in Bahrain",
        "SPORTS",
        "The weightlifter dominates the world championships.",
        900,
    ),
    SampleStory(
        "former-defense-minister-kim-accused",
        "Former Defense Minister Kim Accused of Ordering Strike on North Korea",
        "ASIA",
        "Prosecutors examine orders given before martial law.",
        1000,
    ),
    SampleStory(
        "uber-weride-autonomous-taxi-abu-dhabi",
        "Uber Teams Up with Chinese Firm WeRide for First Autonomous Taxi Service in Abu Dhabi",
        "BUSINESS",
        "Robotaxis arrive in the Gulf.",
        1100,
    ),
    SampleStory(
        "chinese-evs-byd-xiaomi-tesla",
        "Chinese EVs Are Taking Over the Market—BYD and Xiaomi Are Stepping on Tesla's Toes",
        "BUSINESS",
        "Chinese carmakers gain share at home and abroad.",
        1150,
    ),
    SampleStory(
        "microsoft-ai-deal-uae",
        "Is Microsoft’s $1.5 Billion AI Deal with UAE a Risky Gamble for U.S. Security?",
        "BUSINESS",
        "Lawmakers question the investment in G42.",
        1200,
    ),
    SampleStory(
        "film-industry-calls-for-impeachment",
        "Film Industry Calls for Yoon’s Impeachment—3,000 Sign Statement Amid Martial Law "
        "Controversy",
        "ENTERTAINMENT",
        "Directors and actors sign a joint statement.",
        1250,
    ),
    SampleStory(
        "china-buying-gold-again",
        "China Starts Buying Gold Again After Six Months—Could This Shake Up Prices?",
        "ASIA",
        "The central bank resumes purchases.",
        1300,
    ),
]

_BY_SLUG = {s.slug: s for s in _STORIES}

# The lists as the article page shows them, in their on-page order.
LISTS: dict[SourceRole, list[SampleStory]] = {
    SourceRole.LATEST: _STORIES[:7],
    SourceRole.MUST_READ: [
        _BY_SLUG[s]
        for s in (
            "kim-jong-un-achievements-2024",
            "could-president-attack-north-korea",
            "saudi-price-cuts-oil-markets",
            "park-myong-jin-three-gold-medals",
            "former-defense-minister-kim-accused",
        )
    ],
    SourceRole.POPULAR: [
        _BY_SLUG[s]
        for s in (
            "uber-weride-autonomous-taxi-abu-dhabi",
            "chinese-evs-byd-xiaomi-tesla",
            "microsoft-ai-deal-uae",
            "film-industry-calls-for-impeachment",
            "china-buying-gold-again",
        )
    ],
}

_LIST_TITLES = {
    SourceRole.LATEST: "Latest Stories",
    SourceRole.MUST_READ: "Must-Reads",
    SourceRole.POPULAR: "Popular Now",
}


def rss_feed(role: SourceRole, now: datetime) -> str:
    """The RSS 2.0 document for one of the site's lists."""
    items = "".join(
        f"""
    <item>
      <title>{escape(s.title)}</title>
      <link>{s.url}?utm_source=rss&amp;utm_medium=feed</link>
      <guid isPermaLink="false">{SITE}/story/{s.slug}</guid>
      <category>{s.section}</category>
      <description>{escape(s.summary)}</description>
      <pubDate>{format_datetime(now - timedelta(minutes=s.minutes_ago))}</pubDate>
    </item>"""
        for s in LISTS[role]
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0">
  <channel>
    <title>Example News — {_LIST_TITLES[role]}</title>
    <link>{SITE}/</link>
    <description>{_LIST_TITLES[role]} from Example News</description>{items}
  </channel>
</rss>
"""


# "You May Also Like" is shown on the page but is no list this product reads.
_ALSO_LIKE = LISTS[SourceRole.MUST_READ]


def _html_list(title: str, stories: list[SampleStory], numbered: bool) -> str:
    items = "".join(
        f"""
      <li>{f'<span class="rank">{n}</span>' if numbered else ""}
        <a href="{s.url.removeprefix(SITE)}"><span class="title">{html_escape(s.title)}</span></a>
        {f'<span class="section-label">{s.section}</span>' if numbered else ""}
      </li>"""
        for n, s in enumerate(stories, start=1)
    )
    return f"""
  <section class="story-list">
    <h2 class="list-heading">{title}</h2>
    <ul>{items}
    </ul>
  </section>"""


def article_page() -> str:
    """The article page as the site serves it: the article, then the lists beside it."""
    lead = LISTS[SourceRole.LATEST][0]
    lists = "".join(
        [
            _html_list("[LATEST] Latest Stories", LISTS[SourceRole.LATEST][1:], numbered=False),
            _html_list("You May Also Like", _ALSO_LIKE, numbered=True),
            _html_list("Popular Now", LISTS[SourceRole.POPULAR], numbered=True),
            _html_list("Must-Reads", LISTS[SourceRole.MUST_READ], numbered=True),
            _html_list("Popular Now", LISTS[SourceRole.POPULAR], numbered=True),
        ]
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html_escape(lead.title)}</title>
<link rel="canonical" href="{lead.url}"></head>
<body>
  <nav><a href="/">Quick access to main page</a></nav>
  <article><h1>{html_escape(lead.title)}</h1><p>{html_escape(lead.summary)}</p></article>
  <aside>{lists}
  </aside>
  <div class="share">Share it on...</div>
</body>
</html>
"""


def story_page(story: SampleStory, published_at: datetime) -> str:
    """A story's own page, describing itself in OpenGraph and JSON-LD as news sites do."""
    json_ld = json.dumps(
        {
            "@context": "https://schema.org",
            "@type": "NewsArticle",
            "headline": story.title,
            "description": story.summary,
            "image": [f"{SITE}/images/{story.slug}.jpg"],
            "articleSection": story.section.title(),
            "author": [{"@type": "Person", "name": "Daniel Kim"}],
            "datePublished": published_at.isoformat(),
        }
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html_escape(story.title)}</title>
<link rel="canonical" href="{story.url}">
<meta property="og:title" content="{html_escape(story.title)}">
<meta property="og:description" content="{html_escape(story.summary)}">
<meta property="og:image" content="{SITE}/images/{story.slug}.jpg">
<meta property="article:section" content="{story.section.title()}">
<script type="application/ld+json">{json_ld}</script>
</head><body><article><h1>{html_escape(story.title)}</h1></article></body></html>
"""


def write_feeds(directory: Path, now: datetime) -> dict[SourceRole, Path]:
    """Write one feed file per list; returns where each went."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in LISTS:
        path = directory / f"{role.value}.xml"
        path.write_text(rss_feed(role, now), encoding="utf-8")
        paths[role] = path
    return paths


def register_sample_sources(session: Session, directory: Path, now: datetime) -> list[Source]:
    """(Re)write the sample feeds and make sure each is a source; returns the sources."""
    sources = []
    for role, path in write_feeds(directory, now).items():
        url = path.as_uri()
        source = session.scalars(select(Source).where(Source.url == url)).first()
        if source is None:
            source = Source(url=url, kind="rss", role=role, name=f"Example News: {role.value}")
            session.add(source)
        sources.append(source)
    session.commit()
    return sources


def demo_newsletter(session: Session, subscribers: int) -> Newsletter:
    """The demo's newsletter with ``subscribers`` confirmed readers at example.org."""
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == "daily")).first()
    if newsletter is None:
        newsletter = Newsletter(slug="daily", name="Example News Daily")
        session.add(newsletter)
        session.flush()
    for n in range(1, subscribers + 1):
        subscribe_active(session, newsletter, f"reader{n:03d}@example.org", f"Reader {n}")
    session.commit()
    return newsletter
