"""Story ingestion: a source's feed in, one story row per canonical URL out.

A fetch or parse failure is recorded on the source and changes no story: the feed is parsed
completely before the first row is touched.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
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
    tracking parameters. Raises ValueError for a URL that cannot be a story's address."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    port = parts.port  # ValueError for a port out of range
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


def _feedparser_entries(data: bytes) -> list[dict[str, Any]]:
    """RSS and Atom (and RDF): feedparser copes with wrong encodings and sloppy XML."""
    parsed = feedparser.parse(data)
    if not parsed.entries:
        reason = parsed.get("bozo_exception") or "no items found"
        raise IngestError(f"not a usable feed: {reason}")
    return [
        {
            "url": entry.get("link"),
            "guid": entry.get("id"),
            "title": entry.get("title", ""),
            "summary": entry.get("summary", ""),
            "section": (entry.get("tags") or [{}])[0].get("term") or "",
            "author": entry.get("author", ""),
            "published_at": _published(entry),
        }
        for entry in parsed.entries
    ]


def _json_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_feed_entries(data: bytes) -> list[dict[str, Any]]:
    """JSON Feed 1.0 and 1.1 (https://jsonfeed.org/version/1.1), which feedparser does not read."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IngestError(f"not a usable JSON Feed: {exc}") from exc
    if not isinstance(document, dict) or not str(document.get("version", "")).startswith(
        "https://jsonfeed.org/version/"
    ):
        raise IngestError("not a usable feed: JSON without a JSON Feed version")
    items = document.get("items")
    if not isinstance(items, list) or not items:
        raise IngestError("not a usable feed: no items found")
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        tags = item.get("tags")
        authors = item.get("authors") or [item.get("author") or {}]
        author = authors[0] if isinstance(authors, list) and authors else {}
        entries.append(
            {
                "url": item.get("url") or item.get("external_url"),
                "guid": item.get("id"),
                "title": item.get("title") or "",
                "summary": item.get("summary") or item.get("content_text") or "",
                "section": tags[0] if isinstance(tags, list) and tags else "",
                "author": author.get("name", "") if isinstance(author, dict) else "",
                "published_at": _json_date(item.get("date_published"))
                or _json_date(item.get("date_modified")),
            }
        )
    return entries


def _text(value: object, limit: int) -> str:
    return plain_text(value)[:limit] if isinstance(value, str) else ""


def parse_feed(data: bytes, base_url: str) -> list[FeedItem]:
    """Parse RSS, Atom or JSON Feed bytes; raise IngestError when nothing usable is in them.

    Items without a link or a title, or whose link cannot be a story's address, are skipped.
    """
    if len(data) > MAX_FEED_BYTES:
        raise IngestError(f"feed is {len(data)} bytes, over the {MAX_FEED_BYTES}-byte limit")
    is_json = data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")
    entries = _json_feed_entries(data) if is_json else _feedparser_entries(data)
    items = []
    for entry in entries:
        title = _text(entry["title"], 500)
        link = entry["url"]
        if not title or not isinstance(link, str) or not link.strip():
            continue
        try:
            url = canonical_url(urljoin(base_url, link))
        except ValueError:
            continue
        if urlsplit(url).scheme not in ("http", "https"):
            continue
        guid = entry["guid"]
        items.append(
            FeedItem(
                url=url,
                guid=str(guid)[:2048] if guid else None,
                title=title,
                summary=_text(entry["summary"], 5000),
                section=_text(entry["section"], 100).upper(),
                author=_text(entry["author"], 200),
                published_at=entry["published_at"],
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
