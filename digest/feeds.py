"""Parsing feeds (RSS, Atom, JSON Feed) into plain story items, and the URL and text
normalisation that gives every story one identity."""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser

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
    image_url: str | None = None


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
    if not host:
        raise ValueError(f"{url!r} has no host")
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


def _feed_image(entry: feedparser.FeedParserDict) -> str | None:
    """An item's picture: Media RSS content/thumbnail, or an image enclosure."""
    for media in [*entry.get("media_content", []), *entry.get("media_thumbnail", [])]:
        if media.get("url") and media.get("medium", "image") == "image":
            return str(media["url"])
    for enclosure in entry.get("enclosures", []):
        if str(enclosure.get("type", "")).startswith("image/") and enclosure.get("href"):
            return str(enclosure["href"])
    return None


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
            "image_url": _feed_image(entry),
        }
        for entry in parsed.entries
    ]


def iso_datetime(value: object) -> datetime | None:
    """An ISO 8601 / RFC 3339 timestamp as UTC; None for anything else (naive means UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
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
                "published_at": iso_datetime(item.get("date_published"))
                or iso_datetime(item.get("date_modified")),
                "image_url": item.get("image") or item.get("banner_image"),
            }
        )
    return entries


def _text(value: object, limit: int) -> str:
    return plain_text(value)[:limit] if isinstance(value, str) else ""


def _image(value: object, base_url: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        url = urljoin(base_url, value.strip())
        scheme = urlsplit(url).scheme
    except ValueError:  # e.g. a broken IPv6 literal
        return None
    return url[:2048] if scheme in ("http", "https") else None


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
                image_url=_image(entry.get("image_url"), url),
            )
        )
    if not items:
        raise IngestError("the feed has items but none with both a link and a title")
    return items
