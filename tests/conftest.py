"""Shared fixtures: real services, SMTP sinks, a real Celery worker, a real web server.

Services that the machine runs (PostgreSQL, Redis, RabbitMQ) are required in CI (CI=true): a
missing one fails the test loudly. Elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings, load_settings
from digest.db import migrate, session_factory
from tests.support import (
    SMTP_SINK,
    LocalSite,
    PostfixSink,
    Service,
    SmtpSink,
    free_port,
    require_service,
    wait_until,
    worker_command,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "DIGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DIGEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("DIGEST_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    """DIGEST_* settings for this test, on the embedded defaults; tests override entries."""
    return {
        "DIGEST_DATA_DIR": str(data_dir),
        "DIGEST_SECRET_KEYS": "test-key-" + uuid.uuid4().hex,
        "DIGEST_QUEUE": "digest-test-" + uuid.uuid4().hex[:8],
        "DIGEST_TICK_SECONDS": "2",
        "DIGEST_BATCH_SIZE": "7",
        # Tracking events reach the database within this; tests wait on it, not on 50 ms.
        "DIGEST_TRACKING_FLUSH_MS": "10",
    }


@pytest.fixture
def sqlite_settings(env: dict[str, str]) -> Settings:
    settings = load_settings(env)
    migrate(settings.database_url)
    return settings


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    require_service("PostgreSQL", POSTGRES_ADMIN_URL, 5432)
    name = "digest_test_" + uuid.uuid4().hex[:10]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        from digest.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_sessions(request: pytest.FixtureRequest, env: dict[str, str]) -> sessionmaker[Session]:
    """Sessions on a fresh migrated database: SQLite, then PostgreSQL (skipped where it is not
    running, required in CI)."""
    url = load_settings(env).database_url
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    return session_factory(url)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser for screenshots (DIGEST_CHROMIUM or chromium on PATH); required in CI."""
    from digest.screenshots import ScreenshotError, find_browser

    try:
        return find_browser(os.environ.get("DIGEST_CHROMIUM") or None)
    except ScreenshotError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc}; CI requires it")
        pytest.skip(str(exc))


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def postfix_sink(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], PostfixSink]]:
    """Start Postfix's smtp-sink with fault flags, e.g. ``postfix_sink(["-q", "."])`` (see
    tests.support.PostfixSink); all are stopped afterwards. Skipped where smtp-sink is not
    installed, required in CI."""
    if not os.access(SMTP_SINK, os.X_OK):
        message = f"Postfix's smtp-sink is not installed at {SMTP_SINK} (Debian package postfix)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI requires it")
        pytest.skip(message)
    sinks: list[PostfixSink] = []

    def start(flags: Sequence[str] = ()) -> PostfixSink:
        # Not under tmp_path: pytest's base directory is private to its user, and as root the
        # sink writes its dumps as an unprivileged user (PostfixSink.start).
        dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        sink = PostfixSink(flags, dump_dir, tmp_path / f"smtp-sink-{len(sinks)}.log")
        sinks.append(sink)
        sink.start()
        return sink

    yield start
    for sink in sinks:
        sink.stop()
        shutil.rmtree(sink.dump_dir, ignore_errors=True)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]], Service]]:
    """Start product processes (tests.support.Service); all are stopped afterwards."""
    services: list[Service] = []

    def start(command: list[str], env: dict[str, str]) -> Service:
        service = Service(command, env, tmp_path / f"service-{len(services)}.log")
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


@pytest.fixture
def start_worker(start_service) -> Callable[[dict[str, str]], Service]:
    return lambda env: start_service(worker_command(env), env)


@pytest.fixture
def web_server() -> Iterator[Callable[[Settings], str]]:
    """Serve the ASGI app with uvicorn on a free port; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings) -> str:
        from digest.web.app import create_app

        port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 10, "the web server to start")
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def local_site() -> Iterator[LocalSite]:
    """A real HTTP server on 127.0.0.1; tests put pages on it (see tests.support.LocalSite)."""
    site = LocalSite()
    try:
        yield site
    finally:
        site.close()
