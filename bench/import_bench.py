"""Subscribers from CSV into PostgreSQL and back: rows per second, and peak memory at 10,000
and 100,000 rows, to show that the import's memory stays flat as the file grows.

    .venv/bin/python bench/import_bench.py [--rows 100000] [--repeat 3] [--database-url URL]

URL (default: $DIGEST_BENCH_DATABASE_URL, else postgresql+psycopg://postgres@127.0.0.1:5432/test)
is where the bench connects to create a fresh database for each run, on the same server, and
to drop it afterwards, as tests/conftest.py does. Each case runs in a fresh subprocess, so
its peak RSS (getrusage's ru_maxrss) is its own; the file is opened as `digest subscribers
import` opens it. Cases, in this order on one database:
- baseline: the subprocess with everything imported and a connection open, no rows (the floor);
- import_10k: a file of 10,000 new addresses;
- import_full: a file of --rows other new addresses;
- reimport_full: the same file again (every row already subscribed: look-ups, no inserts);
- export_full: every subscription of the newsletter written to a CSV file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("baseline", "import_10k", "import_full", "reimport_full", "export_full")
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo", "UTC")


def write_file(path: Path, rows: int, prefix: str) -> None:
    """A list as a newsroom's old provider exports it: names, time zones, some preferences."""
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,timezone,sections,frequency\r\n")
        for n in range(rows):
            sections = "Politics;Sport" if n % 3 == 0 else ""
            frequency = "weekly" if n % 5 == 0 else "daily"
            out.write(
                f"{prefix}.reader{n}@example.org,Reader {n},{ZONES[n % len(ZONES)]},"
                f"{sections},{frequency}\r\n"
            )


def run_case(case: str, workdir: Path, url: str) -> dict[str, float]:
    """In the subprocess: run one case, report its rows, seconds and peak RSS."""
    from sqlalchemy import select

    from digest.db import session_factory
    from digest.models import Newsletter
    from digest.subscriber_csv import export_subscribers, import_subscribers

    with session_factory(url)() as session:
        newsletter = session.scalars(select(Newsletter)).one()
        session.commit()
        rows = 0
        started = time.perf_counter()
        if case.startswith(("import", "reimport")):
            name = "10k.csv" if case == "import_10k" else "full.csv"
            with (workdir / name).open("rb") as raw:
                lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
                report = import_subscribers(session, newsletter, lines)
            rows = report.imported + report.already_subscribed
            assert report.errors == 0, report.first_errors[:5]
        elif case == "export_full":
            path = workdir / "export.csv"
            with path.open("w", encoding="utf-8", newline="") as out:
                rows = export_subscribers(session, newsletter, out)
        seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def one_run(url: str, workdir: Path, rows: int) -> dict[str, dict[str, float]]:
    """A fresh database, the two files, every case in its own subprocess."""
    from digest.db import engine_for, migrate, session_factory
    from digest.models import Newsletter

    name = "digest_bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    bench_url = url.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(bench_url)
        with session_factory(bench_url)() as session:
            session.add(Newsletter(slug="daily", name="Daily", sections=["Politics", "Sport"]))
            session.commit()
        engine_for(bench_url).dispose()
        write_file(workdir / "10k.csv", 10_000, "small")
        write_file(workdir / "full.csv", rows, "full")
        results = {}
        for case in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--workdir", str(workdir),
                 "--database-url", bench_url],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[case] = json.loads(out.stdout)
        return results
    finally:
        engine_for(bench_url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--database-url", default=os.environ.get("DIGEST_BENCH_DATABASE_URL", DEFAULT_URL)
    )
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.workdir, args.database_url)))
        return

    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            for case, result in one_run(args.database_url, Path(tmp), args.rows).items():
                runs[case].append(result)
        print(f"run {n + 1}/{args.repeat} done", file=sys.stderr)
    floor = statistics.median(r["peak_rss_mb"] for r in runs["baseline"])
    print(f"{args.rows:,} rows, median of {args.repeat} runs, PostgreSQL")
    print("| case | rows | seconds | rows/s | peak RSS MB | above baseline MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for case, results in runs.items():
        rows = int(results[0]["rows"])
        seconds = statistics.median(r["seconds"] for r in results)
        rss = statistics.median(r["peak_rss_mb"] for r in results)
        rate = f"{rows / seconds:,.0f}" if rows else ""
        print(f"| {case} | {rows:,} | {seconds:.2f} | {rate} | {rss:.0f} | {rss - floor:.0f} |")


if __name__ == "__main__":
    main()
