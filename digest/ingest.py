"""Ingesting a source: fetch, parse, enrich, store — one story row per canonical URL.

Order matters for the "nothing already stored is lost" rule: everything that can fail on bad
input (the fetch, the parse, the story pages) happens before the first write, and the writes
happen in one transaction. A failure is recorded on the source (error, count, backoff) and
changes no story.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import urljoin, urlsplit

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.feeds import FeedItem, IngestError, canonical_url, parse_feed, plain_text
from digest.fetch import Fetcher, FetchError
from digest.html_lists import Selectors, page_metadata, parse_lists
from digest.models import Listing, Source, SourceRole, Story, StoryRevision, utcnow

log = logging.getLogger(__name__)

# Story pages fetched per run to fill in what a list or feed lacks; the rest wait a run.
ENRICH_LIMIT = 30
MAX_BACKOFF = timedelta(hours=6)
# A claimed source is not handed out again for this long, even if its task is lost.
CLAIM_LEASE = timedelta(minutes=10)
_CHUNK = 500

__all__ = ["IngestError", "IngestResult", "claim_due_sources", "ingest_source"]


@dataclass(frozen=True)
class Listed:
    """An item as the source lists it: which list, and its place on it."""

    item: FeedItem
    role: SourceRole
    rank: int


@dataclass(frozen=True)
class IngestResult:
    listed: int = 0
    new: int = 0
    updated: int = 0
    not_modified: bool = False


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head


def parse_document(source: Source, body: bytes, url: str) -> list[Listed]:
    """The source's items with their lists and ranks; IngestError when there are none."""
    if source.kind == "html":
        try:
            selectors = Selectors.from_config(source.selectors)
        except ValueError as exc:
            raise IngestError(f"the source's selectors are unusable: {exc}") from exc
        listed = []
        for link in parse_lists(body, selectors):
            try:
                story_url = canonical_url(urljoin(url, link.href))
            except ValueError:
                continue
            title = plain_text(link.title)[:500]
            if urlsplit(story_url).scheme not in ("http", "https") or not title:
                continue
            item = FeedItem(story_url, None, title, "", link.section.upper()[:100], "", None)
            listed.append(Listed(item, link.role, link.rank))
        if not listed:
            raise IngestError(
                "no story lists found on the page (looked for headings such as 'Latest Stories',"
                " 'Must-Reads', 'Popular Now'); set the source's selectors if its markup differs"
            )
        return listed
    try:
        items = parse_feed(body, url)
    except IngestError as exc:
        if _looks_like_html(body):
            raise IngestError(
                f"{exc}; this is an HTML page, not a feed: add it with --kind html if it shows "
                "story lists"
            ) from exc
        raise
    return [Listed(item, source.role, rank) for rank, item in enumerate(items, start=1)]


def _needs_page(item: FeedItem) -> bool:
    return not item.summary or item.published_at is None


def _same_site(a: str, b: str) -> bool:
    host_a, host_b = urlsplit(a).hostname or "", urlsplit(b).hostname or ""
    return host_a.removeprefix("www.") == host_b.removeprefix("www.")


def _from_page(item: FeedItem, fetcher: Fetcher) -> FeedItem:
    """Fill what the item lacks from its story page. A page that cannot be read leaves the
    item as it is: a story without a summary beats no story."""
    try:
        page = fetcher.get(item.url)
    except FetchError as exc:
        log.info("story page not read: %s", exc)
        return item
    if page.body is None:
        return item
    meta = page_metadata(page.body)
    url = item.url
    if meta.canonical:
        try:
            candidate = canonical_url(urljoin(page.url, meta.canonical))
        except ValueError:
            candidate = url
        # A page may only re-key itself within its own site.
        if _same_site(candidate, item.url):
            url = candidate
    return replace(
        item,
        url=url,
        title=item.title or plain_text(meta.title or "")[:500],
        summary=item.summary or plain_text(meta.description or "")[:5000],
        section=item.section or plain_text(meta.section or "").upper()[:100],
        author=item.author or plain_text(meta.author or "")[:200],
        published_at=item.published_at or meta.published_at,
        image_url=item.image_url or (urljoin(page.url, meta.image) if meta.image else None),
    )


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class _KnownStories:
    """The stored stories an ingest run can match, loaded in a few IN queries, not one per
    item: match on canonical URL first, then on feed GUID."""

    def __init__(self, session: Session, items: list[FeedItem]) -> None:
        self.by_url: dict[str, Story] = {}
        self.by_guid: dict[str, Story] = {}
        guids = {i.guid for i in items if i.guid}
        for chunk in _chunks({i.url for i in items}):
            self.remember(session.scalars(select(Story).where(Story.canonical_url.in_(chunk))))
        for chunk in _chunks(guids - self.by_guid.keys()):
            self.remember(session.scalars(select(Story).where(Story.guid.in_(chunk))))

    def remember(self, stories: Iterable[Story]) -> None:
        for story in stories:
            self.by_url[story.canonical_url] = story
            if story.guid:
                self.by_guid[story.guid] = story

    def match(self, item: FeedItem) -> Story | None:
        return self.by_url.get(item.url) or (self.by_guid.get(item.guid) if item.guid else None)


def _without_reused_guids(listed: list[Listed]) -> list[Listed]:
    """A GUID that a feed gives to two different URLs identifies neither: the later items keep
    their URL identity and lose the GUID, instead of overwriting the first story."""
    first_url: dict[str, str] = {}
    cleaned = []
    for entry in listed:
        guid = entry.item.guid
        if guid and first_url.setdefault(guid, entry.item.url) != entry.item.url:
            log.warning("GUID %r reused for %s; matching it by URL only", guid, entry.item.url)
            entry = replace(entry, item=replace(entry.item, guid=None))
        cleaned.append(entry)
    return cleaned


def _update(session: Session, story: Story, item: FeedItem, source_id: int) -> bool:
    """Apply what changed; headline and summary changes are kept as revisions."""
    changed = False
    for field in ("title", "summary"):
        old, new = getattr(story, field), getattr(item, field)
        if new and new != old:
            session.add(
                StoryRevision(
                    story_id=story.id,
                    field=field,
                    old_value=old,
                    new_value=new,
                    source_id=source_id,
                )
            )
            setattr(story, field, new)
            changed = True
    for field, new in (
        ("section", item.section),
        ("author", item.author),
        ("image_url", item.image_url),
        ("guid", item.guid),
    ):
        if new and getattr(story, field) != new and (field != "guid" or not story.guid):
            setattr(story, field, new)
            changed = True
    return changed


def _store(session: Session, source: Source, listed: list[Listed], now: datetime) -> IngestResult:
    known = _KnownStories(session, [entry.item for entry in listed])
    new = updated = 0
    placed: dict[tuple[SourceRole, Story], int] = {}
    for entry in listed:
        item = entry.item
        story = known.match(item)
        if story is None:
            story = Story(
                canonical_url=item.url,
                guid=item.guid,
                title=item.title,
                summary=item.summary,
                section=item.section,
                author=item.author,
                image_url=item.image_url,
                published_at=item.published_at or now,
                source_id=source.id,
                first_seen_at=now,
            )
            session.add(story)
            known.remember([story])
            new += 1
        elif story.id is not None and _update(session, story, item, source.id):
            updated += 1
        placed.setdefault((entry.role, story), entry.rank)
    session.flush()
    session.execute(delete(Listing).where(Listing.source_id == source.id))
    session.execute(
        insert(Listing),
        [
            {"source_id": source.id, "role": role, "story_id": story.id, "rank": rank}
            for (role, story), rank in placed.items()
        ],
    )
    return IngestResult(listed=len(listed), new=new, updated=updated)


def backoff(source: Source) -> timedelta:
    """Exponential in the consecutive failures, capped, with jitter so that sources that broke
    together do not all retry together."""
    delay = timedelta(seconds=source.interval_seconds) * 2 ** min(source.error_count, 12)
    return min(delay, MAX_BACKOFF) * random.uniform(0.9, 1.1)


def _record_failure(session: Session, source_id: int, error: str, now: datetime) -> None:
    session.rollback()
    source = session.get_one(Source, source_id)
    source.last_error = error[:2000]
    source.error_count += 1
    source.last_fetched_at = now
    source.next_fetch_at = now + backoff(source)
    session.commit()


def ingest_source(session: Session, source: Source, fetcher: Fetcher) -> IngestResult:
    """Fetch and store one source. On failure the error is recorded on the source (and
    committed) and IngestError is raised; no story is changed."""
    now = utcnow()
    source_id = source.id
    try:
        fetched = fetcher.get(source.url, source.etag, source.last_modified)
        if fetched.body is None:
            result = IngestResult(not_modified=True)
        else:
            listed = parse_document(source, fetched.body, fetched.url)
            # Only new stories are worth a page fetch; stored ones were enriched already.
            lacking = [entry.item for entry in listed if _needs_page(entry.item)]
            known = _KnownStories(session, lacking)
            budget = ENRICH_LIMIT
            for index, entry in enumerate(listed):
                if budget and _needs_page(entry.item) and known.match(entry.item) is None:
                    budget -= 1
                    listed[index] = replace(entry, item=_from_page(entry.item, fetcher))
            result = _store(session, source, _without_reused_guids(listed), now)
            source.etag, source.last_modified = fetched.etag, fetched.last_modified
        source.last_error = None
        source.error_count = 0
        source.last_fetched_at = source.last_success_at = now
        source.next_fetch_at = now + timedelta(seconds=source.interval_seconds)
        session.commit()
        return result
    except (FetchError, IngestError) as exc:
        _record_failure(session, source_id, str(exc), now)
        raise IngestError(str(exc)) from exc
    except IntegrityError as exc:
        # Another source stored the same story a moment ago; the next run matches it.
        _record_failure(session, source_id, f"concurrent update, retried next run: {exc}", now)
        raise IngestError("another ingest stored the same stories; retried next run") from exc


def claim_due_sources(session: Session, now: datetime) -> list[int]:
    """Atomically take the sources whose fetch is due. Their next fetch moves a lease ahead,
    so a duplicate tick does not fetch them twice; the ingest sets the real next time."""
    due = or_(Source.next_fetch_at.is_(None), Source.next_fetch_at <= now)
    claimed = session.scalars(
        update(Source)
        .where(due)
        .values(next_fetch_at=now + CLAIM_LEASE)
        .returning(Source.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(claimed)
