"""Story ingestion: a source's feed in, one story row per canonical URL out.

A fetch or parse failure is recorded on the source and changes no story: the feed is parsed
completely before the first row is touched.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from digest.models import Source, SourceRole, Story, utcnow

MAX_FEED_BYTES = 10 * 1024 * 1024

# Query parameters that identify a campaign or a click, never the story.
_TRACKING_PARAMS = {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "ref"}


class IngestError(Exception):
    """The source could not be read or parsed; the message is recorded on the source."""


@dataclass(frozen=True)
class FeedItem:
    url: str
    guid: str | None
    title: str
    summary: str
    section: str
    author: str
    published_at: datetime | None


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def plain_text(value: str) -> str:
    """Feed titles and summaries may carry markup or script: keep only the words."""
    extractor = _TextExtractor()
    extractor.feed(value)
    extractor.close()
    return " ".join("".join(extractor.parts).split())


def canonical_url(url: str) -> str:
    """One spelling per story: lower-case scheme and host, no default port, no fragment, no
    tracking parameters."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not k.lower().startswith("utm_") and k.lower() not in _TRACKING_PARAMS
        ]
    )
    return urlunsplit((scheme, host, parts.path or "/", query, ""))


def _published(entry: feedparser.FeedParserDict) -> datetime | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return None
    return datetime.fromtimestamp(calendar.timegm(parsed), UTC)


def parse_feed(data: bytes, base_url: str) -> list[FeedItem]:
    """Parse RSS, Atom or JSON Feed bytes; raise IngestError when nothing usable is in them."""
    if len(data) > MAX_FEED_BYTES:
        raise IngestError(f"feed is {len(data)} bytes, over the {MAX_FEED_BYTES}-byte limit")
    parsed = feedparser.parse(data)
    if not parsed.entries:
        reason = parsed.get("bozo_exception") or "no items found"
        raise IngestError(f"not a usable feed: {reason}")
    items = []
    for entry in parsed.entries:
        link = entry.get("link")
        title = plain_text(entry.get("title", ""))
        if not link or not title:
            continue
        tags = entry.get("tags") or []
        items.append(
            FeedItem(
                url=canonical_url(urljoin(base_url, link)),
                guid=entry.get("id") or None,
                title=title[:500],
                summary=plain_text(entry.get("summary", "")),
                section=(tags[0].get("term") or "").strip().upper()[:100] if tags else "",
                author=plain_text(entry.get("author", ""))[:200],
                published_at=_published(entry),
            )
        )
    if not items:
        raise IngestError("the feed has items but none with both a link and a title")
    return items


def read_source(url: str) -> bytes:
    """Read a source's document. Local files only for now: network fetching lands together
    with its SSRF guard, conditional GET and size caps."""
    parts = urlsplit(url)
    if parts.scheme not in ("", "file"):
        raise IngestError(f"{url}: only local feed files (file://) can be read yet")
    path = Path(unquote(parts.path))
    try:
        with path.open("rb") as f:
            return f.read(MAX_FEED_BYTES + 1)
    except OSError as exc:
        raise IngestError(f"cannot read {path}: {exc.strerror}") from exc


def _upsert(session: Session, source: Source, item: FeedItem, now: datetime) -> Story:
    conditions = [Story.canonical_url == item.url]
    if item.guid:
        conditions.append(Story.guid == item.guid)
    story = session.scalars(select(Story).where(or_(*conditions)).limit(1)).first()
    if story is None:
        story = Story(
            canonical_url=item.url,
            guid=item.guid,
            source_id=source.id,
            published_at=item.published_at or now,
        )
        session.add(story)
    story.title = item.title
    story.summary = item.summary or story.summary
    story.section = item.section or story.section
    story.author = item.author or story.author
    return story


def ingest_source(
    session: Session, source: Source, read: Callable[[str], bytes] = read_source
) -> int:
    """Fetch and store one source's items; returns how many stories it listed.

    A failure is recorded on the source (and committed) and re-raised; stories are untouched.
    """
    now = utcnow()
    try:
        items = parse_feed(read(source.url), source.url)
    except IngestError as exc:
        source.last_error = str(exc)
        source.error_count += 1
        source.last_fetched_at = now
        session.commit()
        raise
    stories = [_upsert(session, source, item, now) for item in items]
    session.flush()
    rank_column = {
        SourceRole.MUST_READ: Story.must_read_rank,
        SourceRole.POPULAR: Story.popular_rank,
    }.get(source.role)
    if rank_column is not None:
        # The source's list replaces the previous one: what fell off it loses its rank.
        session.execute(update(Story).where(rank_column.is_not(None)).values({rank_column: None}))
        for rank, story in enumerate(stories, start=1):
            setattr(story, rank_column.key, rank)
    source.last_error = None
    source.error_count = 0
    source.last_fetched_at = now
    session.commit()
    return len(stories)
