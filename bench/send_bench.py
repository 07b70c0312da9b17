"""Sending end to end: N subscribers through a real worker, broker and PostgreSQL into a local
SMTP sink, in messages per second, beside a bare smtplib loop sending one prebuilt message N
times to the same sink in the same run (the ceiling: no sending engine can beat it).

    .venv/bin/python bench/send_bench.py [--subscribers 10000] [--concurrency 2]
        [--broker-url amqp://guest:guest@127.0.0.1:5672//]
        [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Run on demand, never by the test suite. It creates a fresh PostgreSQL database (dropped at the
end), ingests the sample site, subscribes N readers and prepares today's edition (not timed),
then starts ``digest worker --beat --concurrency C`` and times from its start until every
delivery is final; it also gives the rate from the first final delivery on, which leaves out
the worker's start-up (a few seconds, a large share of a small edition). The sink (aiosmtpd,
its own process) counts what it accepted; the bench checks that count equals the deliveries
marked sent. Worker memory is the peak RSS (VmHWM) of the worker's processes, summed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digest.config import load_settings  # noqa: E402
from digest.db import engine_for, migrate, session_factory  # noqa: E402
from digest.editions import prepare_edition  # noqa: E402
from digest.fetch import Fetcher  # noqa: E402
from digest.ingest import ingest_source  # noqa: E402
from digest.models import FINAL_DELIVERY_STATES, Delivery, DeliveryState, utcnow  # noqa: E402
from digest.sample_site import demo_newsletter, register_sample_sources  # noqa: E402
from digest.selection import Reader  # noqa: E402
from digest.sending import EditionMailer, Recipient  # noqa: E402


def sink_main(port: int, count_file: Path) -> None:
    """The sink process: accept everything, count messages, write the count when stopped."""
    from aiosmtpd.controller import Controller

    class Counter:
        accepted = 0

        async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
            Counter.accepted += len(envelope.rcpt_tos)
            return "250 OK"

    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    stopped = asyncio.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.is_set():
        time.sleep(0.1)
    controller.stop()
    count_file.write_text(str(Counter.accepted))


class Sink:
    def __init__(self, workdir: Path, name: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.count_file = workdir / f"{name}.count"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(self.port), str(self.count_file)]
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                smtplib.SMTP("127.0.0.1", self.port, timeout=1).quit()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return int(self.count_file.read_text())


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its descendants, in MB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
        )
        pids += [int(c) for c in children]
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()

    name = "digest_bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, url, Path(tmp))
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(args: argparse.Namespace, url: str, workdir: Path) -> None:
    queue = "digest-bench-" + uuid.uuid4().hex[:6]
    env = {
        "DIGEST_DATA_DIR": str(workdir / "data"),
        "DIGEST_DATABASE_URL": url,
        "DIGEST_BROKER_URL": args.broker_url,
        "DIGEST_QUEUE": queue,
        "DIGEST_BATCH_SIZE": str(args.batch_size),
        "DIGEST_LOG_LEVEL": "warning",
    }
    settings = load_settings(env)
    migrate(url)
    sessions = session_factory(url)
    print(f"preparing {args.subscribers:,} subscribers and the edition (not timed)...")
    with sessions() as session, Fetcher.from_settings(settings) as fetcher:
        for source in register_sample_sources(session, settings.data_dir / "site", utcnow()):
            ingest_source(session, source, fetcher)
        newsletter = demo_newsletter(session, args.subscribers)
        now = utcnow()
        edition = prepare_edition(session, newsletter, now.date(), now)
        first = session.scalars(select(Delivery).order_by(Delivery.id).limit(1)).one()
        message = (
            EditionMailer(session, settings, edition)
            .message(
                Recipient(first.id, first.subscriber_id, "reader001@example.org", True, Reader()),
                now,
            )
            .data
        )
        edition_id = edition.id

    # The ceiling: one connection, the same prebuilt message N times.
    sink = Sink(workdir, "ceiling")
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
        for n in range(args.subscribers):
            smtp.sendmail("bounce@news.example.com", [f"reader{n}@example.org"], message)
    ceiling_seconds = time.perf_counter() - started
    assert sink.stop() == args.subscribers

    # The product: a real worker (with its beat) sends the edition.
    sink = Sink(workdir, "digest")
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    worker_env.update(env, DIGEST_SMTP_URL=f"smtp://127.0.0.1:{sink.port}")
    digest = str(Path(sys.executable).parent / "digest")
    log = (workdir / "worker.log").open("w")
    started = time.perf_counter()
    worker = subprocess.Popen(
        [digest, "worker", "--beat", "--concurrency", str(args.concurrency)],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        done = 0
        # When the first rows were final, and how many: the worker's start-up and first
        # dispatch are behind it.
        first_final, first_done = 0.0, 0
        while done < args.subscribers:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; see {workdir / 'worker.log'}")
            # Twice a second, counting the rows still to go (fewer as the run goes on): the
            # count is the bench's own load on the database the worker uses.
            time.sleep(0.5)
            with sessions() as session:
                done = args.subscribers - session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.edition_id == edition_id)
                    .where(Delivery.state.in_(set(DeliveryState) - set(FINAL_DELIVERY_STATES)))
                )
            if done and not first_done:
                first_final, first_done = time.perf_counter() - started, done
            print(f"\r  {done:,}/{args.subscribers:,} final", end="", flush=True)
        digest_seconds = time.perf_counter() - started
        rss = peak_rss_mb(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        log.close()
    accepted = sink.stop()
    with sessions() as session:
        sent = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.state == DeliveryState.SENT)
        )
    print()
    ceiling_rate = args.subscribers / ceiling_seconds
    digest_rate = args.subscribers / digest_seconds
    broker = args.broker_url.split(":")[0]
    print(f"{args.subscribers:,} subscribers, worker --concurrency {args.concurrency}, "
          f"batch {args.batch_size}, broker {broker}, PostgreSQL")  # fmt: skip
    print("| run | seconds | messages/s | share of ceiling | sink accepted | sent rows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| smtplib loop (ceiling) | {ceiling_seconds:.1f} | {ceiling_rate:,.0f} | 100% "
          f"| {args.subscribers:,} | |")  # fmt: skip
    print(f"| digest worker | {digest_seconds:.1f} | {digest_rate:,.0f} "
          f"| {digest_rate / ceiling_rate:.0%} | {accepted:,} | {sent:,} |")  # fmt: skip
    print(f"worker peak RSS (all processes): {rss:,.0f} MB")
    steady = (args.subscribers - first_done) / (digest_seconds - first_final)
    print(f"first delivery final after {first_final:.1f} s; from then on {steady:,.0f} messages/s "
          f"({steady / ceiling_rate:.0%} of the ceiling)")  # fmt: skip
    if accepted != sent:
        raise SystemExit(f"MISMATCH: the sink accepted {accepted}, the database says {sent} sent")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--sink":
        sink_main(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
