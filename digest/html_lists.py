"""Reading a news site's HTML: the story lists of a section page, the metadata of a story page.

Section pages show lists under headings ("Latest Stories", "Must-Reads", "Popular Now"). By
default a list is found by its heading's words; a source can name CSS selectors instead when its
markup is unusual. Story pages describe themselves in ``<link rel=canonical>``, OpenGraph meta
tags and JSON-LD; JSON-LD wins where they disagree, because it is the most specific.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from selectolax.lexbor import LexborHTMLParser as HTMLParser
from selectolax.lexbor import LexborNode as Node
from selectolax.lexbor import SelectolaxError

from digest.feeds import iso_datetime
from digest.models import SourceRole

# Heading words → the list they introduce. "You May Also Like" and the like match nothing.
_HEADINGS: list[tuple[re.Pattern[str], SourceRole]] = [
    (re.compile(r"\bmust[\s-]*reads?\b|\beditor'?s'? picks?\b", re.I), SourceRole.MUST_READ),
    (re.compile(r"\bpopular\b|\bmost[\s-]+(read|viewed)\b|\btrending\b", re.I), SourceRole.POPULAR),
    (re.compile(r"\blatest\b|\bjust in\b|\bnewest\b", re.I), SourceRole.LATEST),
]
_HEADING_TAGS = "h1, h2, h3, h4, h5, h6, [class*=heading], [class*=title]"
_SECTION_LABEL = "[class*=section], [class*=category], [class*=label], [class*=kicker]"
_LEADING_NUMBER = re.compile(r"^\s*(\d{1,3})[.)]?\s+")
_ARTICLE_TYPES = {"NewsArticle", "Article", "ReportageNewsArticle", "AnalysisNewsArticle",
                  "OpinionNewsArticle", "BlogPosting"}  # fmt: skip


@dataclass(frozen=True)
class Selectors:
    """Per-source overrides: ``lists`` maps a role to a selector matching its list element."""

    lists: Mapping[SourceRole, str] | None = None
    item: str = "li"
    link: str = "a[href]"
    title: str | None = None
    section: str = _SECTION_LABEL

    @classmethod
    def from_config(cls, config: object) -> Selectors:
        """Selectors from a source's JSON; ValueError saying what is wrong with it."""
        if not config:
            return cls()
        if not isinstance(config, dict):
            raise ValueError("selectors must be a JSON object")
        unknown = config.keys() - {"lists", "item", "link", "title", "section"}
        if unknown:
            raise ValueError(f"unknown selector keys: {', '.join(sorted(unknown))}")
        lists = config.get("lists") or {}
        if not isinstance(lists, dict):
            raise ValueError('"lists" must map a list name to a CSS selector')
        roles = {r.value for r in SourceRole}
        if not lists.keys() <= roles:
            raise ValueError(f'"lists" names must be among: {", ".join(sorted(roles))}')
        selectors = cls(
            lists={SourceRole(k): v for k, v in lists.items()} or None,
            item=config.get("item", "li"),
            link=config.get("link", "a[href]"),
            title=config.get("title"),
            section=config.get("section", _SECTION_LABEL),
        )
        probe = HTMLParser("<p></p>")
        for css in [*(selectors.lists or {}).values(), selectors.item, selectors.link,
                    selectors.title, selectors.section]:  # fmt: skip
            if css is None:
                continue
            if not isinstance(css, str) or not css.strip():
                raise ValueError(f"{css!r} is not a CSS selector")
            try:
                probe.css(css)
            except SelectolaxError as exc:
                raise ValueError(f"{css!r} is not a valid CSS selector: {exc}") from exc
        return selectors


@dataclass(frozen=True)
class ListedLink:
    role: SourceRole
    rank: int
    href: str
    title: str
    section: str


def _text(node: Node | None) -> str:
    return " ".join(node.text(separator=" ").split()) if node is not None else ""


def _following_list(heading: Node) -> Node | None:
    """The first list after the heading: among its next siblings, else its ancestors'."""
    node: Node | None = heading
    for _ in range(4):
        if node is None:
            return None
        sibling = node.next
        while sibling is not None:
            if sibling.tag in ("ul", "ol"):
                return sibling
            if sibling.tag and sibling.tag != "-text":
                nested = sibling.css_first("ul, ol")
                if nested is not None:
                    return nested
            sibling = sibling.next
        node = node.parent
    return None


def _inside(node: Node, tags: tuple[str, ...]) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag in tags:
            return True
        parent = parent.parent
    return False


def _lists_by_heading(tree: HTMLParser) -> Iterator[tuple[SourceRole, Node]]:
    seen: set[int] = set()
    for heading in tree.css(_HEADING_TAGS):
        if _inside(heading, ("li", "a")):  # a story's own title, not a list's heading
            continue
        words = _text(heading)
        if len(words) > 60:  # a paragraph with a "title" class, not a heading
            continue
        role = next((r for pattern, r in _HEADINGS if pattern.search(words)), None)
        if role is None:
            continue
        container = _following_list(heading)
        if container is not None and container.mem_id not in seen:
            seen.add(container.mem_id)
            yield role, container


def parse_lists(html: bytes | str, selectors: Selectors | None = None) -> list[ListedLink]:
    """Every story link on the page's lists, with its list and rank (1-based, page order).

    The same list heading may appear twice on a page (sites repeat "Popular Now"); the first
    occurrence of a link in a list keeps its rank.
    """
    selectors = selectors or Selectors()
    tree = HTMLParser(html)
    tree.strip_tags(["script", "style", "noscript", "template"])
    if selectors.lists:
        containers = [
            (role, node) for role, css in selectors.lists.items() for node in tree.css(css)
        ]
    else:
        containers = list(_lists_by_heading(tree))
    links: list[ListedLink] = []
    ranks: dict[SourceRole, int] = {}
    seen: set[tuple[SourceRole, str]] = set()
    for role, container in containers:
        for item in container.css(selectors.item):
            anchor = item.css_first(selectors.link)
            href = (anchor.attributes.get("href") or "").strip() if anchor else ""
            if not href or (role, href) in seen:
                continue
            title_node = item.css_first(selectors.title) if selectors.title else None
            section = _text(item.css_first(selectors.section))
            title = _text(title_node) if title_node is not None else _text(anchor)
            rank = ranks.get(role, 0) + 1
            # Numbered lists often put the rank inside the link; "707 Unit Commander…" keeps
            # its number because 707 is not this item's place in the list.
            number = _LEADING_NUMBER.match(title)
            if number and int(number.group(1)) == rank:
                title = title[number.end() :]
            if section and title.endswith(section):
                title = title[: -len(section)].rstrip()
            if not title:
                continue
            seen.add((role, href))
            ranks[role] = rank
            links.append(ListedLink(role, rank, href, title, section))
    return links


@dataclass(frozen=True)
class PageMetadata:
    canonical: str | None = None
    title: str | None = None
    description: str | None = None
    image: str | None = None
    section: str | None = None
    author: str | None = None
    published_at: datetime | None = None


def _first(value: object, key: str | None = None) -> str | None:
    """JSON-LD values may be a string, an object, or a list of either."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict) and key:
        value = value.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _json_ld_article(tree: HTMLParser) -> dict[str, Any]:
    for script in tree.css('script[type="application/ld+json"]'):
        try:
            data = json.loads(script.text(deep=True) or "null")
        except ValueError:
            continue
        candidates = data if isinstance(data, list) else [data]
        for candidate in list(candidates):
            if isinstance(candidate, dict) and isinstance(candidate.get("@graph"), list):
                candidates.extend(candidate["@graph"])
        for candidate in candidates:
            if not isinstance(candidate, dict):
                continue
            declared = candidate.get("@type")
            types = declared if isinstance(declared, list) else [declared]
            if _ARTICLE_TYPES & {t for t in types if isinstance(t, str)}:
                return candidate
    return {}


def page_metadata(html: bytes | str) -> PageMetadata:
    tree = HTMLParser(html)

    def meta(*names: str) -> str | None:
        for name in names:
            node = tree.css_first(f'meta[property="{name}"], meta[name="{name}"]')
            content = (node.attributes.get("content") or "").strip() if node else ""
            if content:
                return content
        return None

    canonical_node = tree.css_first('link[rel="canonical"]')
    article = _json_ld_article(tree)
    author = _first(article.get("author"), "name") or meta("author")
    return PageMetadata(
        canonical=(canonical_node.attributes.get("href") or "").strip() or None
        if canonical_node
        else None,
        title=_first(article.get("headline")) or meta("og:title", "twitter:title"),
        description=_first(article.get("description"))
        or meta("og:description", "description", "twitter:description"),
        image=_first(article.get("image"), "url") or meta("og:image", "twitter:image"),
        section=_first(article.get("articleSection")) or meta("article:section"),
        author=author,
        published_at=iso_datetime(article.get("datePublished"))
        or iso_datetime(meta("article:published_time")),
    )
