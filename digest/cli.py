"""The ``digest`` command. Each subcommand translates arguments into calls on digest/."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr
from pathlib import Path

import click
from jinja2 import TemplateNotFound
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from digest.config import ConfigError, Settings, load_settings, redact_url
from digest.db import migrate, session_factory
from digest.edition_control import (
    EditionStateError,
    EditionStatus,
    cancel,
    edition_status,
    pause,
    resume,
    send,
)
from digest.editions import EditionNotFound, NothingToSend, load_edition, prepare_edition
from digest.editor_templates import EditorTemplateError, check_editor_template
from digest.feeds import canonical_url
from digest.fetch import Fetcher
from digest.health import OK, readiness
from digest.html_lists import Selectors
from digest.inbound import read_mailbox
from digest.ingest import IngestError, ingest_source
from digest.logs import configure_logging
from digest.mail import TransportError
from digest.mailboxes import MailboxError
from digest.models import (
    FINAL_DELIVERY_STATES,
    DeliveryState,
    Edition,
    Newsletter,
    SocialAccount,
    SocialPost,
    SocialPostState,
    Source,
    SourceRole,
    Story,
    utcnow,
)
from digest.preview import PreviewError, render_preview, send_test, write_preview
from digest.privacy import erase_subscriber, personal_data
from digest.render import RenderedMessage, check_locale, environment
from digest.sample_site import demo_newsletter, register_sample_sources
from digest.screenshots import ScreenshotError
from digest.sending import delivery_counts
from digest.social.accounts import (
    BOUNDS,
    PLATFORMS,
    AccountError,
    PostingSettings,
    connect,
    instance_limit,
    update_settings,
)
from digest.social.posting import images_from, publish, thumbnail_fetcher
from digest.social.queue import (
    QueueError,
    Sharing,
    approve,
    entries,
    outlook,
    post_now,
    previews,
    skip,
)
from digest.social.vault import CredentialsUnreadable, Vault
from digest.stats import edition_report, to_csv
from digest.stats_table import render_table
from digest.subscriber_csv import (
    MAX_REPORTED_ROWS,
    CsvError,
    export_row_count,
    export_subscribers,
    import_subscribers,
)
from digest.subscriptions import InvalidAddress, normalise_email
from digest.sunset import run_sunset
from digest.tokens import MAX_ID

DEMO_WAIT_SECONDS = 180


def _settings() -> Settings:
    """The settings, and this command's logging set up from them."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings)
    return settings


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *args]


@click.group()
def main() -> None:
    """Newsroom Digest: email digests and social posts from a news site's stories."""


@main.command()
def init() -> None:
    """Create or upgrade the database schema."""
    settings = _settings()
    migrate(settings.database_url)
    click.echo(f"database ready: {redact_url(settings.database_url)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """Serve tracked links, the open pixel and the public pages."""
    import uvicorn

    settings = _settings()
    migrate(settings.database_url)
    # No access log: it would write every reader's full address and token (tracking stores
    # truncated networks only), and it costs a quarter of the click throughput.
    uvicorn.run(
        "digest.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        # Ours (digest.logs, set up by create_app in each worker process), not uvicorn's.
        log_config=None,
    )


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option(
    "--beat/--no-beat",
    default=False,
    help="Also run the scheduler in this process (it stands by while another beat runs).",
)
def worker(concurrency: int, beat: bool) -> None:
    """Run a Celery worker (sends digests). Logs as DIGEST_LOG_FORMAT and DIGEST_LOG_LEVEL say."""
    settings = _settings()
    migrate(settings.database_url)
    args = ["worker", "--concurrency", str(concurrency)]
    if beat:
        args += ["--beat", "--schedule", str(settings.data_dir / "celerybeat-schedule")]
    os.execv(sys.executable, _celery(*args))


@main.command()
def beat() -> None:
    """Run the scheduler. A second beat stands by until the first stops (a lock)."""
    settings = _settings()
    schedule = str(settings.data_dir / "celerybeat-schedule")
    os.execv(sys.executable, _celery("beat", "--schedule", schedule))


@main.command()
def health() -> None:
    """Readiness of this installation: exits 0 when the database and the broker answer, 1 if
    not (the container health check of the worker and the beat)."""
    settings = _settings()
    checks = readiness(settings, session_factory(settings.database_url))
    for dependency, state in checks.items():
        click.echo(f"{dependency}: {state}")
    if any(state != OK for state in checks.values()):
        raise SystemExit(1)


def _run_worker_until_sent(settings: Settings, session: Session, edition: Edition) -> None:
    """Start a real worker process and wait until every delivery is final."""
    log_path = settings.data_dir / "demo-worker.log"
    env = {**os.environ, "DIGEST_DATA_DIR": str(settings.data_dir)}
    total = sum(delivery_counts(session, edition.id).values())
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _celery("worker", "--concurrency", "2"),
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
        if _ingest_all(session, settings, sources, "Ingesting the sample site's feeds"):
            raise click.ClickException("the sample site could not be ingested (see above)")
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
    click.echo(f"Mail transport: {redact_url(settings.smtp_url)}")
    outbox = Path(settings.smtp_url.removeprefix("file://"))
    if settings.smtp_url.startswith("file://") and outbox.is_dir():
        first = min(outbox.glob(f"{edition.id}-*.eml"), default=None)
        if first is not None:
            message = BytesParser(policy=policy.default).parsebytes(first.read_bytes())
            body = message.get_body(("plain",))
            link = next(
                (w for w in (body.get_content() if body else "").split() if "/c/" in w), None
            )
            click.echo(f"Open a digest:  less {first}   (or any mail client: it is an .eml file)")
            click.echo("Start the web app:  .venv/bin/digest web")
            if link:
                click.echo(f"Then follow a tracked link:  {link}")


def _ingest_all(session: Session, settings: Settings, sources: list[Source], label: str) -> int:
    """Ingest each source in turn, whatever the others do; returns how many failed."""
    failures: list[str] = []
    with (
        Fetcher.from_settings(settings) as fetcher,
        click.progressbar(
            sources, label=label, item_show_func=lambda s: s.url if s else None
        ) as bar,
    ):
        for source in bar:
            try:
                ingest_source(session, source, fetcher)
            except IngestError as exc:
                failures.append(f"source {source.id} ({source.url}): {exc}")
    for failure in failures:
        click.echo(f"failed: {failure}", err=True)
    return len(failures)


def _session(settings: Settings) -> Session:
    migrate(settings.database_url)
    return session_factory(settings.database_url)()


@main.group()
def sources() -> None:
    """The feeds and pages stories come from."""


@sources.command("add")
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["rss", "atom", "json", "html"]),
    default="rss",
    show_default=True,
    help="Feeds (rss, atom, json) are told apart by their content; html reads story lists.",
)
@click.option(
    "--role",
    type=click.Choice([r.value for r in SourceRole]),
    default=SourceRole.LATEST.value,
    show_default=True,
    help="For a feed: which list of the site it is.",
)
@click.option("--name", default="", help="A label for listings.")
@click.option(
    "--interval",
    default=900,
    show_default=True,
    type=click.IntRange(60, 86_400),
    help="Seconds between fetches.",
)
@click.option(
    "--selectors",
    default=None,
    help='HTML only, as JSON: {"lists": {"must_read": "CSS"}, "item": "li", ...}',
)
def sources_add(
    url: str, kind: str, role: str, name: str, interval: int, selectors: str | None
) -> None:
    """Add a source; it is fetched at the next beat tick or `digest ingest`."""
    hint = "use an http(s):// URL (or file:// inside the data directory)"
    if url.startswith("file://"):
        stored_url = url
    else:
        try:
            stored_url = canonical_url(url)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; {hint}", param_hint="URL") from exc
        if not stored_url.startswith(("http://", "https://")):
            raise click.BadParameter(hint, param_hint="URL")
    try:
        parsed_selectors = json.loads(selectors) if selectors else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--selectors") from exc
    try:
        Selectors.from_config(parsed_selectors)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--selectors") from exc
    with _session(_settings()) as session:
        if session.scalar(select(Source.id).where(Source.url == stored_url)) is not None:
            raise click.ClickException(f"{stored_url} is a source already")
        source = Source(
            url=stored_url,
            kind=kind,
            role=SourceRole(role),
            name=name,
            interval_seconds=interval,
            selectors=parsed_selectors,
        )
        session.add(source)
        session.commit()
        click.echo(f"added source {source.id}: {stored_url}")


@sources.command("list")
def sources_list() -> None:
    """Every source with its state."""
    with _session(_settings()) as session:
        rows = session.scalars(select(Source).order_by(Source.id)).all()
        if not rows:
            click.echo("no sources yet: add one with `digest sources add URL`")
        for source in rows:
            state = (
                f"{source.error_count} failures: {source.last_error}"
                if source.error_count
                else "ok"
            )
            seen = f"{source.last_success_at:%Y-%m-%d %H:%M}" if source.last_success_at else "never"
            click.echo(
                f"{source.id:>4}  {source.kind:<5} {source.role.value:<9} {source.url}\n"
                f"      last success {seen}; {state}"
            )


@sources.command("remove")
@click.argument("source_id", type=int)
def sources_remove(source_id: int) -> None:
    """Stop fetching a source. Its stories stay."""
    with _session(_settings()) as session:
        removed = session.execute(delete(Source).where(Source.id == source_id)).rowcount
        session.commit()
    if not removed:
        raise click.ClickException(f"there is no source {source_id}")
    click.echo(f"removed source {source_id}; its stories are kept")


@main.command()
@click.option("--source", "source_id", type=int, default=None, help="Only this source.")
def ingest(source_id: int | None) -> None:
    """Fetch sources now (all of them, or one), whatever their schedule."""
    settings = _settings()
    with _session(settings) as session:
        query = select(Source).order_by(Source.id)
        if source_id is not None:
            query = query.where(Source.id == source_id)
        chosen = list(session.scalars(query))
        if not chosen:
            raise click.ClickException("no such source" if source_id else "no sources yet")
        failed = _ingest_all(session, settings, chosen, "Ingesting")
        stories = session.scalar(select(func.count()).select_from(Story))
    click.echo(
        f"{len(chosen) - failed} of {len(chosen)} sources ingested; {stories} stories stored"
    )
    if failed:
        raise SystemExit(1)


@main.group()
def stories() -> None:
    """Editorial signals on stored stories."""


def _story(session: Session, url: str) -> Story:
    try:
        canonical = canonical_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    story = session.scalars(select(Story).where(Story.canonical_url == canonical)).first()
    if story is None:
        raise click.ClickException(f"no stored story has the URL {canonical}; ingest it first")
    return story


@stories.command("pin")
@click.argument("url")
@click.option(
    "--until",
    required=True,
    type=click.DateTime(),
    help="UTC date or time, e.g. 2026-12-01 or 2026-12-01T18:00:00",
)
def stories_pin(url: str, until: datetime) -> None:
    """Make a story a must-read until the given time."""
    until = until.replace(tzinfo=UTC)
    if until <= utcnow():
        raise click.BadParameter("must be in the future", param_hint="--until")
    with _session(_settings()) as session:
        story = _story(session, url)
        story.pinned_until = until
        session.commit()
        click.echo(f"pinned until {until:%Y-%m-%d %H:%M} UTC: {story.title}")


@stories.command("unpin")
@click.argument("url")
def stories_unpin(url: str) -> None:
    """Remove an editor's must-read pin."""
    with _session(_settings()) as session:
        story = _story(session, url)
        story.pinned_until = None
        session.commit()
        click.echo(f"unpinned: {story.title}")


@main.command()
@click.argument("edition_id", type=int)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
    default=None,
    help="Write per-story and per-link rows as CSV to FILE, or to standard output with -.",
)
def stats(edition_id: int, csv_path: Path | None) -> None:
    """An edition's deliveries, opens, clicks and unsubscribes; people apart from machines."""
    with _session(_settings()) as session:
        try:
            report = edition_report(session, edition_id)
        except EditionNotFound as exc:
            raise click.ClickException(str(exc)) from exc
    if csv_path is not None and str(csv_path) == "-":
        # Only the CSV on standard output, so it can be piped straight into another tool.
        click.echo(to_csv(report), nl=False)
        return
    click.echo(render_table(report))
    if csv_path is not None:
        try:
            # newline="": the csv module already ends rows with CRLF (RFC 4180).
            csv_path.write_text(to_csv(report), encoding="utf-8", newline="")
        except OSError as exc:
            raise click.ClickException(f"cannot write {csv_path}: {exc}") from exc
        click.echo(f"CSV written to {csv_path}")


@main.group()
def editions() -> None:
    """An edition in flight: status, pause, resume, cancel."""


def _status_line(status: EditionStatus) -> str:
    counts = " · ".join(f"{state} {n:,}" for state, n in status.counts.items() if n)
    eta = f"{status.eta_seconds:,.0f} s" if status.eta_seconds is not None else "-"
    why = f" ({status.pause_reason})" if status.state == "paused" else ""
    waiting = ""
    if status.waiting and status.next_local_send_at is not None:
        waiting = (
            f"\n  {status.waiting:,} waiting for their local send hour"
            f" (next {status.next_local_send_at:%Y-%m-%d %H:%M} UTC)"
        )
    return (
        f"edition {status.edition_id} ({status.subject}): {status.state}{why}\n"
        f"  progress {status.done:,}/{status.total:,} ({status.progress:.0%})  {counts}\n"
        f"  rate {status.rate_per_second:,.1f}/s  ETA {eta}{waiting}"
    )


def _control(
    session: Session,
    action: Callable[[Session, int, datetime], EditionStatus],
    edition_id: int,
) -> EditionStatus:
    try:
        status = action(session, edition_id, utcnow())
    except (EditionNotFound, EditionStateError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(_status_line(status))
    return status


@editions.command("status")
@click.argument("edition_id", type=int)
@click.option("--watch", is_flag=True, help="Print the status every 2 s until sending stops.")
def editions_status(edition_id: int, watch: bool) -> None:
    """Progress (final deliveries of all), counts by state, send rate and ETA."""
    with _session(_settings()) as session:
        while _control(session, edition_status, edition_id).state == "sending" and watch:
            session.rollback()  # no transaction held open between looks; fresh rows next time
            time.sleep(2)


@editions.command("pause")
@click.argument("edition_id", type=int)
def editions_pause(edition_id: int) -> None:
    """Claim no further batch (one in flight finishes) until resume."""
    with _session(_settings()) as session:
        _control(session, pause, edition_id)


@editions.command("prepare")
@click.argument("slug")
@click.option(
    "--date",
    "issue_date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="The issue date (default: today, UTC).",
)
@click.option("--hold", is_flag=True, help="Keep it from going out until `editions send ID`.")
def editions_prepare(slug: str, issue_date: datetime | None, hold: bool) -> None:
    """Freeze a newsletter's edition now: stories, order, subject and audience. Without
    --hold it goes out from the next beat tick (each reader at their local send hour, if the
    newsletter has one). Preparing a day that exists shows that edition as it is."""
    with _session(_settings()) as session:
        newsletter = _newsletter(session, slug)
        now = utcnow()
        day = issue_date.date() if issue_date else now.date()
        try:
            edition = prepare_edition(session, newsletter, day, now, hold=hold)
        except NothingToSend as exc:
            raise click.ClickException(f"{exc}: ingest first (`digest ingest`)") from exc
        except EditorTemplateError as exc:
            raise click.ClickException(
                f"{exc}: fix it with `digest newsletters save {slug} --subject-template ...`"
            ) from exc
        _control(session, edition_status, edition.id)


def _preview_of(
    session: Session, edition_id: int, subscriber: str | None
) -> tuple[Edition, RenderedMessage]:
    try:
        edition = load_edition(session, edition_id)
        return edition, render_preview(session, edition, subscriber)
    except (EditionNotFound, PreviewError, InvalidAddress) as exc:
        raise click.ClickException(str(exc)) from exc


@editions.command("preview")
@click.argument("edition_id", type=int)
@click.option("--subscriber", help="As this subscriber would get it now (default: a new reader).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the files.",
)
@click.option("--no-screenshots", is_flag=True, help="Only the HTML and text, no Chromium.")
def editions_preview(
    edition_id: int, subscriber: str | None, out: Path, no_screenshots: bool
) -> None:
    """Write the message as HTML and text, and PNG screenshots at desktop and mobile widths
    (headless Chromium: DIGEST_CHROMIUM, or chromium on PATH). Links are not tracked."""
    settings = _settings()
    with _session(settings) as session:
        _, message = _preview_of(session, edition_id, subscriber)
    # An address's local part may hold "/" and the like: the file name keeps only safe ones.
    local = re.sub(r"[^A-Za-z0-9._-]", "_", subscriber.split("@")[0]) if subscriber else ""
    stem = f"edition-{edition_id}" + (f"-{local}" if local else "")
    if not no_screenshots:
        click.echo("taking screenshots with Chromium...", err=True)
    try:
        files = write_preview(
            message, out, stem, screenshots=not no_screenshots, browser=settings.chromium
        )
    except ScreenshotError as exc:
        raise click.ClickException(f"{exc} (or pass --no-screenshots)") from exc
    click.echo(f"subject: {message.subject}")
    for path in (files.html, files.text, *files.screenshots):
        click.echo(f"wrote {path}")


@editions.command("test-send")
@click.argument("edition_id", type=int)
@click.option("--to", "to", required=True, help="Where to send the test.")
@click.option("--subscriber", help="As this subscriber would get it now (default: a new reader).")
def editions_test_send(edition_id: int, to: str, subscriber: str | None) -> None:
    """Send the edition to one address as a test ("[Test]" in the subject): nothing is
    recorded or counted, links are not tracked, and its unsubscribe links lead nowhere."""
    settings = _settings()
    with _session(settings) as session:
        edition, message = _preview_of(session, edition_id, subscriber)
        try:
            send_test(settings, edition, message, to, utcnow())
        except InvalidAddress as exc:
            raise click.BadParameter(str(exc), param_hint="--to") from exc
        except TransportError as exc:
            raise click.ClickException(
                f"the relay did not take it: {exc} (check DIGEST_SMTP_URL)"
            ) from exc
    click.echo(f"sent a test of edition {edition_id} to {to} via {redact_url(settings.smtp_url)}")


@editions.command("send")
@click.argument("edition_id", type=int)
def editions_send(edition_id: int) -> None:
    """Send an edition prepared with --hold, from the next beat tick."""
    with _session(_settings()) as session:
        _control(session, send, edition_id)


@editions.command("resume")
@click.argument("edition_id", type=int)
def editions_resume(edition_id: int) -> None:
    """Send the rest, from the next beat tick."""
    with _session(_settings()) as session:
        _control(session, resume, edition_id)


@editions.command("cancel")
@click.argument("edition_id", type=int)
def editions_cancel(edition_id: int) -> None:
    """Cancel every delivery not yet handed to the relay; what is sent stays sent."""
    with _session(_settings()) as session:
        _control(session, cancel, edition_id)


@main.group()
def subscribers() -> None:
    """Subscribers: CSV in and out, a person's data and its erasure, the sunset."""


def _newsletter(session: Session, slug: str) -> Newsletter:
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        slugs = ", ".join(session.scalars(select(Newsletter.slug).order_by(Newsletter.slug)))
        raise click.ClickException(
            f"there is no newsletter {slug!r}; the newsletters are: {slugs or 'none yet'}"
        )
    return newsletter


@subscribers.command("import")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@click.option("--newsletter", "slug", required=True, help="The newsletter's slug.")
def subscribers_import(file: Path, slug: str) -> None:
    """Subscribe the addresses in a CSV FILE (- for standard input) to a newsletter, as
    confirmed subscribers.

    The first line names the columns: email, and optionally name, timezone, sections
    (separated by semicolons) and frequency (daily or weekly). Bad rows are listed on standard
    error by line number and skipped; the others go in, a thousand rows per transaction, so the
    same file can be run again after an interruption. Nobody who unsubscribed or is suppressed
    is subscribed again. Exits 1 when the file holds rows but not one valid row.
    """
    stdin = str(file) == "-"
    with _session(_settings()) as session, ExitStack() as stack:
        newsletter = _newsletter(session, slug)
        raw = sys.stdin.buffer if stdin else stack.enter_context(file.open("rb"))
        # Bad UTF-8 becomes U+FFFD, which the import reports per row instead of failing the
        # whole file at the first bad byte.
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        # Hand the byte stream back unclosed (standard input is not ours to close).
        stack.callback(text.detach)
        if not stdin and file.is_file():
            # A file's size is known: the bar shows bytes read (the reader is ahead of the
            # import by one buffer at most).
            bar = stack.enter_context(
                click.progressbar(length=file.stat().st_size, label="Importing", file=sys.stderr)
            )

            def progress(_rows: int) -> None:
                bar.update(raw.tell() - bar.pos)
        else:
            # A stream's length is not: an iterable without one (never iterated) makes the bar
            # count rows instead.
            bar = stack.enter_context(
                click.progressbar(itertools.count(), label="Importing rows", file=sys.stderr)
            )
            progress = bar.update
        try:
            report = import_subscribers(
                session, newsletter, text, source="cli import", progress=progress
            )
        except CsvError as exc:
            raise click.ClickException(f"{file}: {exc}") from exc
    click.echo(
        f"{newsletter.slug}: {report.imported:,} imported, {report.already_subscribed:,} already "
        f"subscribed, {report.duplicates:,} duplicates in the file, {report.suppressed:,} "
        f"suppressed, {report.unsubscribed:,} unsubscribed (left alone), {report.errors:,} "
        "invalid"
    )
    for error in report.first_errors:
        click.echo(f"line {error.line}: {error.reason}", err=True)
    if report.unlisted:
        click.echo(
            f"... and {report.unlisted:,} more rows not imported "
            f"(only the first {MAX_REPORTED_ROWS:,} are listed)",
            err=True,
        )
    # Unusable: rows, and not one of them valid. Bad rows beside valid ones that were all
    # known already (a second run of the same file) are reported, but the file has been
    # applied: a success, as the first run was.
    if report.errors and not report.valid:
        raise SystemExit(1)


@subscribers.command("export")
@click.option(
    "--newsletter",
    "slug",
    default=None,
    help="Only this newsletter's subscribers; without it, every subscription of everyone.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
    default="-",
    show_default=True,
    help="Write the CSV to FILE, or to standard output with -.",
)
def subscribers_export(slug: str | None, output: Path) -> None:
    """Write subscribers as CSV, one row per subscription (erased subscribers left out).

    Cells a spreadsheet would run as formulas are written behind an apostrophe; `digest
    subscribers import` reads them back as they were. Progress goes to standard error.
    """
    with _session(_settings()) as session, ExitStack() as stack:
        newsletter = _newsletter(session, slug) if slug else None
        if str(output) == "-":
            # UTF-8 whatever the locale says, rows ending in CRLF as RFC 4180 has them.
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
            stack.callback(out.detach)  # flushes, and leaves standard output open
        else:
            try:
                out = stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            except OSError as exc:
                raise click.ClickException(f"cannot write {output}: {exc}") from exc
        total = export_row_count(session, newsletter)
        with click.progressbar(length=total, label="Exporting", file=sys.stderr) as bar:
            written = export_subscribers(session, newsletter, out, progress=bar.update)
    click.echo(f"{written:,} rows written to {output}", err=True)


@subscribers.command("data")
@click.argument("email")
def subscribers_data(email: str) -> None:
    """Everything held about EMAIL, as JSON (GDPR access and portability)."""
    with _session(_settings()) as session:
        try:
            data = personal_data(session, email)
        except InvalidAddress as exc:
            raise click.ClickException(str(exc)) from exc
    if data is None:
        raise click.ClickException(f"we hold no data about {email}")
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@subscribers.command("erase")
@click.argument("email")
@click.confirmation_option(
    prompt="Erase this person's data? Their counts stay, their address is suppressed."
)
def subscribers_erase(email: str) -> None:
    """Erase the person behind EMAIL (GDPR erasure): address, name and the networks and user
    agents of their events go; deliveries, opens and clicks keep counting; the address is
    suppressed, as a hash, so no later import brings it back."""
    with _session(_settings()) as session:
        try:
            erased = erase_subscriber(session, email)
        except InvalidAddress as exc:
            raise click.ClickException(str(exc)) from exc
    if not erased:
        raise click.ClickException(f"there is no subscriber {email}")
    click.echo(f"erased {email}")


@subscribers.command("sunset")
def subscribers_sunset() -> None:
    """Run the daily sunset now: re-engage readers silent for DIGEST_SUNSET_EDITIONS editions,
    pause those who did not come back within 14 days."""
    settings = _settings()
    with _session(settings) as session:
        result = run_sunset(session, settings, utcnow())
    click.echo(
        f"{result.reengaged} asked whether they still read, {result.paused} paused, "
        f"{result.back} came back"
    )


@main.command()
@click.option(
    "--mailbox",
    default=None,
    help="maildir:///path, imaps://user:pass@host/FOLDER or imap://… (default: "
    "DIGEST_INBOUND_MAILBOX).",
)
def inbound(mailbox: str | None) -> None:
    """Read bounces, complaints and mailto unsubscribes from the inbound mailbox now."""
    settings = _settings()
    url = mailbox or settings.inbound_mailbox
    if url is None:
        raise click.ClickException("no mailbox: pass --mailbox or set DIGEST_INBOUND_MAILBOX")
    with _session(settings) as session:
        try:
            handled, outcome = read_mailbox(session, settings.secret_keys, url)
        except MailboxError as exc:
            raise click.ClickException(str(exc)) from exc
    summary = ", ".join(f"{n} {what}" for what, n in sorted(outcome.items())) or "nothing"
    click.echo(f"{handled} messages handled: {summary}")


OFF = "off"


class _HourOrOff(click.ParamType):
    """An hour of the day, or "off" to clear a setting saved before."""

    name = "HOUR|off"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if isinstance(value, int) or str(value).lower() != OFF:
            return click.IntRange(0, 23).convert(value, param, ctx)
        return OFF


_HOUR_OR_OFF = _HourOrOff()


@main.group()
def newsletters() -> None:
    """The lists readers subscribe to, each with its own schedule, sender and sections."""


@newsletters.command("save")
@click.argument("slug")
@click.option("--name", help="Shown to readers (required for a new newsletter).")
@click.option("--from", "from_address", help="From address (default: DIGEST_FROM).")
@click.option("--reply-to", help="Reply-To address.")
@click.option("--template", help="templates/email/<TEMPLATE>.html and .txt (default: digest).")
@click.option("--sections", help="Comma-separated sections readers may choose from.")
@click.option(
    "--send-hour-utc",
    type=_HOUR_OR_OFF,
    help="Hour (UTC) the beat prepares the daily edition ('off': only by hand).",
)
@click.option(
    "--local-send-hour",
    type=_HOUR_OR_OFF,
    help="Deliver at this hour in each reader's time zone ('off': when prepared).",
)
@click.option(
    "--weekly-day", type=click.IntRange(0, 6), help="Weekday of weekly readers (0 = Monday)."
)
@click.option(
    "--consent-text", help="Shown on the subscribe form; its hash goes in the consent log."
)
@click.option("--locale", help="Dates, numbers and the templates' words (en, de, fr, pt_BR...).")
@click.option(
    "--section-quota",
    type=click.IntRange(1),
    help="At most this many Latest Stories from one section (default 4).",
)
@click.option(
    "--min-items",
    type=click.IntRange(1),
    help="Fewer new stories than this for a reader: no edition for them that day (default 1).",
)
@click.option(
    "--subject-template",
    help="Jinja for the subject, e.g. '{{ newsletter }}: {{ top.title }}' ('' for the default).",
)
@click.option(
    "--intro-template",
    help="Jinja for an intro above the stories; variables as for the subject ('' for none).",
)
def newsletters_save(slug: str, **options: object) -> None:
    """Create the newsletter SLUG, or change the options given.

    Subject and intro templates see: newsletter, date, date_text (in the locale), stories
    (each with title, section, summary), top (the first story) and count."""
    values = {key: value for key, value in options.items() if value is not None}
    for key in ("send_hour_utc", "local_send_hour"):
        if values.get(key) == OFF:
            values[key] = None
    if "locale" in values:
        try:
            values["locale"] = check_locale(str(values["locale"]))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--locale") from exc
    if "sections" in values:
        values["sections"] = [s.strip() for s in str(values["sections"]).split(",") if s.strip()]
    for key in ("from_address", "reply_to"):
        if key in values:
            try:
                normalise_email(parseaddr(str(values[key]))[1])
            except InvalidAddress as exc:
                hint = f"--{key.replace('_', '-')}"
                raise click.BadParameter(str(exc), param_hint=hint) from exc
    if "template" in values:
        for part in ("html", "txt"):
            try:
                environment().get_template(f"email/{values['template']}.{part}")
            except TemplateNotFound:
                raise click.BadParameter(
                    f"there is no templates/email/{values['template']}.{part}",
                    param_hint="--template",
                ) from None
    with _session(_settings()) as session:
        newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
        for key in ("subject_template", "intro_template"):
            if key in values:
                try:
                    check_editor_template(
                        key.removesuffix("_template"),
                        str(values[key]),
                        str(values.get("name") or (newsletter.name if newsletter else slug)),
                        str(values.get("locale") or (newsletter.locale if newsletter else "en")),
                    )
                except EditorTemplateError as exc:
                    hint = f"--{key.replace('_', '-')}"
                    raise click.BadParameter(str(exc), param_hint=hint) from exc
        if newsletter is None:
            if "name" not in values:
                raise click.ClickException(f"{slug!r} is new: give it a --name")
            newsletter = Newsletter(slug=slug, **values)
            session.add(newsletter)
        else:
            for key, value in values.items():
                setattr(newsletter, key, value)
        session.commit()
        click.echo(_newsletter_line(newsletter))


def _newsletter_line(n: Newsletter) -> str:
    local = f", local {n.local_send_hour:02d}:00" if n.local_send_hour is not None else ""
    prepared = f"{n.send_hour_utc:02d}:00 UTC" if n.send_hour_utc is not None else "by hand"
    return (
        f"{n.slug}: {n.name} (from {n.from_address or 'DIGEST_FROM'}; prepared {prepared}"
        f"{local}; sections {', '.join(n.sections) or 'none'})"
    )


@newsletters.command("list")
def newsletters_list() -> None:
    with _session(_settings()) as session:
        for newsletter in session.scalars(select(Newsletter).order_by(Newsletter.slug)):
            click.echo(_newsletter_line(newsletter))


@main.group()
def social() -> None:
    """Social accounts, their posting queue, and posts."""


# A row id: larger numbers cannot name a row, and would fail the query instead.
_ID = click.IntRange(1, MAX_ID)


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "-"


def _story_arg(session: Session, story: str) -> Story:
    """A story by id or by URL."""
    if story.isascii() and story.isdigit():
        found = session.get(Story, int(story)) if int(story) <= MAX_ID else None
        if found is None:
            raise click.ClickException(f"there is no story {story}")
        return found
    return _story(session, story)


def _posting_settings(**options: object) -> PostingSettings:
    return PostingSettings(**{k: v for k, v in options.items() if v is not None})  # type: ignore[arg-type]


_posting_options = [
    click.option("--timezone", help="The account's time zone for slots and the daily cap."),
    click.option("--slots", help='Posting times, local: "08:00,12:30,17:00" ("" for none).'),
    click.option(
        "--daily-cap", type=click.IntRange(*BOUNDS["daily_cap"]), help="Posts per local day."
    ),
    click.option(
        "--approval/--no-approval", default=None, help="Hold posts for an editor's approval."
    ),
    click.option(
        "--expiry-minutes",
        type=click.IntRange(*BOUNDS["expiry_minutes"]),
        help="Drop a post not made this long after its time.",
    ),
    click.option(
        "--reshare-days",
        type=click.IntRange(*BOUNDS["reshare_days"]),
        help="Re-share evergreen stories (0: never).",
    ),
    click.option("--utm-campaign", help="utm_campaign of the account's links."),
    click.option(
        "--max-characters",
        type=click.IntRange(*BOUNDS["max_characters"]),
        help="The account's length limit.",
    ),
]


def _with_posting_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_posting_options):
        command = option(command)
    return command


@social.command("connect")
@click.argument("platform", type=click.Choice(list(PLATFORMS)))
@click.argument("handle")
@click.option("--base-url", help="The API's URL (a Mastodon instance; a local test server).")
@click.option(
    "--credentials-file",
    type=click.File("r"),
    help="A JSON object of credentials; '-' reads it from stdin.",
)
@_with_posting_options
def social_connect(
    platform: str,
    handle: str,
    base_url: str | None,
    credentials_file: io.TextIOBase | None,
    **options: object,
) -> None:
    """Add an account, or give an existing one new credentials.

    Credentials come from --credentials-file (JSON) or are asked for, hidden; they are
    stored encrypted with DIGEST_SECRET_KEYS and never shown again.
    """
    settings = _settings()
    credentials: dict[str, str] = {}
    if credentials_file is not None:
        try:
            loaded = json.load(credentials_file)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--credentials-file") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise click.BadParameter(
                'must be an object of strings, e.g. {"access_token": "…"}',
                param_hint="--credentials-file",
            )
        credentials.update(loaded)
    info = PLATFORMS[platform]
    for name in info.required:
        if not credentials.get(name):
            if not sys.stdin.isatty():
                raise click.ClickException(f"{platform} needs {name}: put it in --credentials-file")
            credentials[name] = click.prompt(name, hide_input=True)
    vault = Vault(settings.secret_keys)
    with _session(settings) as session:
        try:
            account = connect(
                session,
                vault,
                platform,
                handle,
                credentials,
                base_url=base_url,
                settings=_posting_settings(**options),
                now=utcnow(),
            )
        except AccountError as exc:
            raise click.ClickException(str(exc)) from exc
        if options.get("max_characters") is None:
            said = instance_limit(account, vault, session_factory(settings.database_url))
            if said:
                click.echo(said)
        session.commit()
        click.echo(_account_line(account))


def _account_line(a: SocialAccount) -> str:
    status = a.status.value + (f" ({a.status_reason})" if a.status_reason else "")
    slots = a.slots or "none (must-reads only)"
    extras = [
        f"approval {'on' if a.approval else 'off'}",
        f"expiry {a.expiry_minutes} min",
        f"re-share evergreen every {a.reshare_days} days" if a.reshare_days else "no re-shares",
    ]
    return (
        f"{a.id}: {a.platform}:{a.handle} [{status}] slots {slots} ({a.timezone}), "
        f"cap {a.daily_cap}/day, " + ", ".join(extras)
    )


@social.command("accounts")
def social_accounts() -> None:
    """List connected accounts and their posting settings."""
    with _session(_settings()) as session:
        accounts = session.scalars(select(SocialAccount).order_by(SocialAccount.id)).all()
        if not accounts:
            click.echo("no accounts: add one with `digest social connect PLATFORM HANDLE`")
        for account in accounts:
            click.echo(_account_line(account))


@social.command("set")
@click.argument("account_id", type=_ID)
@click.option("--pause/--resume", "paused", default=None, help="Stop or restart posting.")
@_with_posting_options
def social_set(account_id: int, paused: bool | None, **options: object) -> None:
    """Change an account's posting settings."""
    with _session(_settings()) as session:
        try:
            account = update_settings(
                session, account_id, _posting_settings(**options), utcnow(), paused=paused
            )
        except AccountError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
        click.echo(_account_line(account))


@social.command("preview")
@click.argument("story")
def social_preview(story: str) -> None:
    """Show STORY (an id or URL) as each account, or each platform, would post it."""
    settings = _settings()
    with _session(settings) as session:
        found = _story_arg(session, story)
        for preview in previews(session, Sharing.of(settings), found.id):
            mark = "" if preview.fits else "  DOES NOT FIT"
            click.echo(f"── {preview.target}: {preview.length}{mark}")
            if preview.text:
                click.echo(preview.text)
            click.echo()


@social.command("post")
@click.argument("story")
@click.option("--account", "account_id", type=_ID, required=True, help="The account's id.")
@click.option("--again", is_flag=True, help="Post it even though it was posted there before.")
def social_post(story: str, account_id: int, again: bool) -> None:
    """Post STORY (an id or URL) to an account now, outside its slots and cap."""
    settings = _settings()
    sessions = session_factory(settings.database_url)
    with _session(settings) as session:
        found = _story_arg(session, story)
        try:
            post = post_now(
                session, Sharing.of(settings), account_id, found.id, utcnow(), again=again
            )
        except (QueueError, AccountError) as exc:
            raise click.ClickException(str(exc)) from exc
        post_id = post.id
    click.echo(f"posting {post_id} …")
    with thumbnail_fetcher(settings) as fetcher:
        result = publish(
            sessions,
            Vault(settings.secret_keys),
            post_id,
            images=images_from(fetcher),
            retry_seconds=settings.social_retry_seconds,
        )
    with sessions() as session:
        row = session.get_one(SocialPost, post_id)
        if result is None:
            click.echo(f"post {post_id} is {row.state.value}; the worker has it")
            return
        if row.state is SocialPostState.POSTED:
            click.echo(f"posted: {row.url or row.remote_id}")
            return
        retry = (
            f", next attempt {_when(row.next_attempt_at)} by the worker"
            if row.state is SocialPostState.QUEUED
            else ""
        )
        raise click.ClickException(f"post {post_id} is {row.state.value}{retry}: {row.last_error}")


@social.command("queue")
@click.option("--account", "account_id", type=_ID, help="Only this account.")
def social_queue(account_id: int | None) -> None:
    """What is waiting, under way and recently done, and what each account does next."""
    now = utcnow()
    with _session(_settings()) as session:
        for look in outlook(session, now, account_id):
            held = (
                f"; waiting for the platform until {_when(look.retry_at)}" if look.retry_at else ""
            )
            status = look.status + (f" ({look.status_reason})" if look.status_reason else "")
            nexts = ", ".join(_when(s) for s in look.next_slots) or "no slots"
            click.echo(
                f"{look.account} [{status}]{held}: {look.posts_today}/{look.daily_cap} today; "
                f"next slots {nexts}; next story: {look.next_story or 'none fresh'}"
            )
        rows = entries(session, now, account_id)
        if not rows:
            click.echo("the queue is empty")
        for entry in rows:
            when = _when(entry.posted_at or entry.scheduled_for)
            click.echo(
                f"  #{entry.id} {entry.state:<17} {when}  {entry.account}  {entry.kind}: "
                f"{entry.title}"
            )
            if entry.url:
                click.echo(f"      {entry.url}")
            if entry.last_error and entry.state != SocialPostState.POSTED:
                click.echo(f"      {entry.last_error}")


@social.command("approve")
@click.argument("post_ids", type=_ID, nargs=-1, required=True)
def social_approve(post_ids: tuple[int, ...]) -> None:
    """Let waiting posts go out at their time."""
    with _session(_settings()) as session:
        count = approve(session, post_ids, utcnow())
    click.echo(f"approved {count} of {len(post_ids)} (the others were not waiting for approval)")


@social.command("skip")
@click.argument("post_ids", type=_ID, nargs=-1, required=True)
def social_skip(post_ids: tuple[int, ...]) -> None:
    """Turn down posts that have not gone out."""
    with _session(_settings()) as session:
        count = skip(session, post_ids, utcnow())
    click.echo(f"skipped {count} of {len(post_ids)} (the others had gone out or were done)")


@social.command("rekey")
def social_rekey() -> None:
    """Encrypt every account's credentials with the newest DIGEST_SECRET_KEYS key."""
    settings = _settings()
    vault = Vault(settings.secret_keys)
    with _session(settings) as session:
        accounts = session.scalars(
            select(SocialAccount).where(SocialAccount.credentials.is_not(None))
        ).all()
        for account in accounts:
            try:
                account.credentials = vault.rekey(account.credentials or b"")
            except CredentialsUnreadable as exc:
                raise click.ClickException(f"account {account.id}: {exc}") from exc
        session.commit()
    click.echo(f"re-encrypted the credentials of {len(accounts)} accounts")


@stories.command("evergreen")
@click.argument("url")
@click.option("--off", is_flag=True, help="No longer evergreen.")
def stories_evergreen(url: str, off: bool) -> None:
    """Mark a story as worth re-sharing on social accounts that re-share."""
    with _session(_settings()) as session:
        story = _story(session, url)
        story.evergreen = not off
        session.commit()
        click.echo(f"{'not ' if off else ''}evergreen: {story.title}")
