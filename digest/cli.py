"""The ``digest`` command. Each subcommand translates arguments into calls on digest/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.config import ConfigError, Settings, load_settings
from digest.db import migrate, session_factory
from digest.editions import NothingToSend, prepare_edition
from digest.ingest import IngestError, ingest_source
from digest.models import (
    FINAL_DELIVERY_STATES,
    DeliveryState,
    Edition,
    Story,
    utcnow,
)
from digest.sample_site import demo_newsletter, register_sample_sources
from digest.sending import delivery_counts

DEMO_WAIT_SECONDS = 180


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _celery(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *args]


@click.group()
def main() -> None:
    """Newsroom Digest: email digests and social posts from a news site's stories."""


@main.command()
def init() -> None:
    """Create or upgrade the database schema."""
    settings = _settings()
    migrate(settings.database_url)
    click.echo(f"database ready: {settings.database_url}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """Serve tracked links, the open pixel and the public pages."""
    import uvicorn

    settings = _settings()
    migrate(settings.database_url)
    uvicorn.run("digest.web.app:create_app", factory=True, host=host, port=port, workers=workers)


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--beat/--no-beat", default=False, help="Also run the scheduler in this process.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, beat: bool, loglevel: str) -> None:
    """Run a Celery worker (sends digests)."""
    settings = _settings()
    migrate(settings.database_url)
    args = ["worker", "--concurrency", str(concurrency), "--loglevel", loglevel]
    if beat:
        args += ["--beat", "--schedule", str(settings.data_dir / "celerybeat-schedule")]
    os.execv(sys.executable, _celery(settings, *args))


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the scheduler. Run exactly one."""
    settings = _settings()
    schedule = str(settings.data_dir / "celerybeat-schedule")
    os.execv(
        sys.executable, _celery(settings, "beat", "--schedule", schedule, "--loglevel", loglevel)
    )


def _run_worker_until_sent(settings: Settings, session: Session, edition: Edition) -> None:
    """Start a real worker process and wait until every delivery is final."""
    log_path = settings.data_dir / "demo-worker.log"
    env = {**os.environ, "DIGEST_DATA_DIR": str(settings.data_dir)}
    total = sum(delivery_counts(session, edition.id).values())
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _celery(settings, "worker", "--concurrency", "2", "--loglevel", "INFO"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEMO_WAIT_SECONDS
        with click.progressbar(length=total, label="Sending through a Celery worker") as bar:
            done = 0
            while done < total:
                if proc.poll() is not None:
                    raise click.ClickException(
                        f"the worker exited with code {proc.returncode}; see {log_path}"
                    )
                if time.monotonic() > deadline:
                    raise click.ClickException(
                        f"deliveries still pending after {DEMO_WAIT_SECONDS}s; see {log_path}"
                    )
                time.sleep(0.3)
                counts = delivery_counts(session, edition.id)
                now_done = sum(counts[s] for s in FINAL_DELIVERY_STATES)
                bar.update(now_done - done)
                done = now_done
                session.rollback()  # end the read transaction so the next poll sees new rows
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish first
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@main.command()
@click.option("--subscribers", default=25, show_default=True, type=click.IntRange(1, 10_000))
def demo(subscribers: int) -> None:
    """Ingest the sample site, prepare today's digest and send it through a real worker."""
    settings = _settings()
    click.echo(f"Data directory: {settings.data_dir}")
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as session:
        sources = register_sample_sources(session, settings.data_dir / "sample-site", utcnow())
        with click.progressbar(sources, label="Ingesting the sample site's feeds") as bar:
            for source in bar:
                try:
                    ingest_source(session, source)
                except IngestError as exc:
                    raise click.ClickException(f"{source.url}: {exc}") from exc
        newsletter = demo_newsletter(session, subscribers)
        now = utcnow()
        try:
            edition = prepare_edition(session, newsletter, now.date(), now)
        except NothingToSend as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"Edition {edition.id} of {edition.issue_date}: {edition.subject}")
        counts = delivery_counts(session, edition.id)
        if counts[DeliveryState.QUEUED] or counts[DeliveryState.SENDING]:
            _run_worker_until_sent(settings, session, edition)
        else:
            click.echo("Today's edition was sent already; delete the data directory to start over.")
        counts = delivery_counts(session, edition.id)
        stories = session.scalar(select(func.count()).select_from(Story))
        _summary(settings, edition, stories or 0, counts)


def _summary(
    settings: Settings, edition: Edition, stories: int, counts: dict[DeliveryState, int]
) -> None:
    outcome = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
    click.echo("")
    click.echo(f"Stories in the database: {stories}")
    click.echo(f"Subscribers in this edition: {sum(counts.values())}")
    click.echo(f"Messages: {outcome}")
    click.echo(f"Mail transport: {settings.smtp_url}")
    outbox = Path(settings.smtp_url.removeprefix("file://"))
    if settings.smtp_url.startswith("file://") and outbox.is_dir():
        first = min(outbox.glob(f"{edition.id}-*.eml"), default=None)
        if first is not None:
            message = BytesParser(policy=policy.default).parse(first.open("rb"))
            body = message.get_body(("plain",))
            link = next(
                (w for w in (body.get_content() if body else "").split() if "/c/" in w), None
            )
            click.echo(f"Open a digest:  less {first}   (or any mail client: it is an .eml file)")
            click.echo("Start the web app:  .venv/bin/digest web")
            if link:
                click.echo(f"Then follow a tracked link:  {link}")
