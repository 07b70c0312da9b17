"""Ingest a 10,000-item feed: items per second and peak memory, beside feedparser's bare parse
of the same file in the same run (the floor no ingest can beat).

    .venv/bin/python bench/ingest_bench.py [--items 10000] [--repeat 3] [--database-url URL]

Each case runs in a fresh subprocess so that its peak RSS is its own. Cases:
- feedparser: ``feedparser.parse`` of the bytes, nothing else;
- parse_feed: our parser (feedparser plus normalisation, canonical URLs, plain text);
- ingest_new: ``ingest_source`` of the file into an empty database (every story new);
- ingest_known: the same feed again with every title changed (every story updated, with
  revisions).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

CASES = ("feedparser", "parse_feed", "ingest_new", "ingest_known")


def write_feed(path: Path, items: int, title_suffix: str = "") -> None:
    now = datetime.now(UTC)
    parts = ['<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>']
    parts.append("<title>Bench</title><link>https://news.example.com/</link>")
    for n in range(items):
        parts.append(
            f"<item><title>{escape(f'Story number {n} about the economy{title_suffix}')}</title>"
            f"<link>https://news.example.com/business/story-{n}?utm_source=rss</link>"
            f"<guid>https://news.example.com/story/{n}</guid>"
            f"<category>BUSINESS</category>"
            f"<description>{escape(f'Summary of story {n}, <b>with</b> some markup.')}"
            f"</description><pubDate>{format_datetime(now - timedelta(minutes=n))}</pubDate>"
            "</item>"
        )
    parts.append("</channel></rss>")
    path.write_text("".join(parts), encoding="utf-8")


def run_case(case: str, workdir: Path, database_url: str) -> dict[str, float]:
    """In the subprocess: time one case, report seconds and peak RSS."""
    feed = workdir / "feed.xml"
    data = feed.read_bytes()
    started = time.perf_counter()
    if case == "feedparser":
        import feedparser

        feedparser.parse(data)
    elif case == "parse_feed":
        from digest.feeds import parse_feed

        parse_feed(data, "https://news.example.com/")
    else:
        from digest.db import session_factory
        from digest.fetch import Allowlist, Fetcher
        from digest.ingest import ingest_source
        from digest.models import Source

        with session_factory(database_url)() as session:
            source = session.query(Source).one()
            if case == "ingest_known":
                write_feed(feed, int((workdir / "items").read_text()), " (updated)")
                started = time.perf_counter()
            with Fetcher(Allowlist(), local_root=workdir) as fetcher:
                ingest_source(session, source, fetcher)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def prepare(workdir: Path, items: int, database_url: str) -> None:
    """A fresh database with one file source pointing at the feed."""
    from sqlalchemy import text

    from digest.db import engine_for, migrate, session_factory
    from digest.models import Base, Source

    write_feed(workdir / "feed.xml", items)
    (workdir / "items").write_text(str(items))
    if not database_url.startswith("sqlite"):
        with engine_for(database_url).begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(text(f"DROP TABLE IF EXISTS {table.name} CASCADE"))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    migrate(database_url)
    with session_factory(database_url)() as session:
        session.add(Source(url=(workdir / "feed.xml").as_uri(), kind="rss"))
        session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.workdir, args.database_url)))
        return

    results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
            prepare(workdir, args.items, url)
            for case in CASES:  # ingest_known must follow ingest_new on the same database
                out = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--workdir", str(workdir),
                     "--database-url", url],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                results[case].append(json.loads(out.stdout))
    baseline = statistics.median(r["seconds"] for r in results["feedparser"])
    database = args.database_url or "SQLite"
    print(f"{args.items} items, median of {args.repeat} runs, database: {database}")
    print(f"{'case':<14}{'seconds':>9}{'items/s':>10}{'x feedparser':>14}{'peak RSS MB':>13}")
    for case, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        rate, ratio = args.items / seconds, seconds / baseline
        print(f"{case:<14}{seconds:>9.2f}{rate:>10.0f}{ratio:>14.2f}{rss:>13.0f}")


if __name__ == "__main__":
    main()
