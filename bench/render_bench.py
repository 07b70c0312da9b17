"""Rendering personalised messages: how many per second per core are rendered and ready for
MIME (subject, HTML and text parts with every reader's tracked links, unsubscribe, preference
and view links filled in), beside plain Jinja rendering of the same template per message in
the same run (the baseline: what rendering each subscriber's message would cost).

    .venv/bin/python bench/render_bench.py [--readers 5000] [--repeat 3]

Run on demand, never by the test suite. It ingests the sample site into a SQLite database in a
temp dir, subscribes the readers (a third with chosen sections, a tenth without tracking) and
prepares today's edition (not timed). Then, in this one process, it times the sending engine's
own path (digest.sending.EditionMailer.rendered: personalise, the layout of the reader's
segment rendered and CSS-inlined once, slots filled per reader) against rendering the
template with each reader's URLs. Times are CPU seconds of this process, so the rate is per
core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digest.config import load_settings  # noqa: E402
from digest.db import migrate, session_factory  # noqa: E402
from digest.editions import prepare_edition  # noqa: E402
from digest.fetch import Fetcher  # noqa: E402
from digest.ingest import ingest_source  # noqa: E402
from digest.models import Delivery, Subscription, utcnow  # noqa: E402
from digest.render import environment, render_context  # noqa: E402
from digest.sample_site import demo_newsletter, register_sample_sources  # noqa: E402
from digest.selection import Reader, chosen_sections  # noqa: E402
from digest.sending import EditionMailer, Recipient  # noqa: E402

CHOICES = [None, ["Asia"], ["Opinion", "World"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        data = Path(workdir) / "data"
        data.mkdir()
        settings = load_settings({"DIGEST_DATA_DIR": str(data), "DIGEST_SECRET_KEYS": "bench"})
        migrate(settings.database_url)
        sessions = session_factory(settings.database_url)
        print(f"preparing {args.readers:,} readers and the edition (not timed)...")
        with sessions() as session, Fetcher.from_settings(settings) as fetcher:
            for source in register_sample_sources(session, data / "site", utcnow()):
                ingest_source(session, source, fetcher)
            newsletter = demo_newsletter(session, args.readers)
            for n, subscription in enumerate(
                session.scalars(select(Subscription).order_by(Subscription.id))
            ):
                subscription.sections = CHOICES[n % len(CHOICES)]
            session.commit()
            now = utcnow()
            edition = prepare_edition(session, newsletter, now.date(), now)
            deliveries = session.execute(
                select(Delivery.id, Delivery.subscriber_id).order_by(Delivery.id)
            ).all()
            recipients = [
                Recipient(
                    delivery_id,
                    subscriber_id,
                    f"reader{n}@example.org",
                    tracking=n % 10 != 0,
                    reader=Reader(sections=chosen_sections(CHOICES[n % len(CHOICES)])),
                )
                for n, (delivery_id, subscriber_id) in enumerate(deliveries)
            ]

            def engine() -> None:
                # A fresh mailer per run, as per batch: its layouts are rendered again.
                mailer = EditionMailer(session, settings, edition)
                for recipient in recipients:
                    mailer.rendered(recipient, mailer.urls(recipient))

            def baseline() -> None:
                mailer = EditionMailer(session, settings, edition)
                template = environment(newsletter.locale).get_template("email/digest.html")
                text = environment(newsletter.locale).get_template("email/digest.txt")
                for recipient in recipients:
                    context = render_context(
                        mailer.frame,
                        mailer.blocks(recipient.reader),
                        mailer.urls(recipient),
                        tracked=mailer.tracked(recipient),
                    )
                    template.render(context)
                    text.render(context)

            results = {}
            for name, run in (("engine", engine), ("baseline", baseline)):
                rates = []
                for _ in range(args.repeat):
                    started = time.process_time()
                    run()
                    rates.append(len(recipients) / (time.process_time() - started))
                results[name] = statistics.median(rates)
                print(
                    f"{name}: {results[name]:,.0f} messages/s per core (runs: "
                    + ", ".join(f"{r:,.0f}" for r in rates)
                    + ")"
                )
            print(f"engine / baseline: {results['engine'] / results['baseline']:.1f}x")


if __name__ == "__main__":
    main()
