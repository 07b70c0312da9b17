"""Helpers shared by the tests: service checks, an SMTP sink, a worker process, seed data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from digest.config import Settings
from digest.db import session_factory
from digest.ingest import ingest_source
from digest.models import utcnow
from digest.sample_site import demo_newsletter, register_sample_sources


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_service(name: str, url: str, default_port: int) -> None:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable at {address[0]}:{address[1]} ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI requires it")
        pytest.skip(message)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) that records what it accepted.

    ``replies`` maps a recipient address to the reply its RCPT gets (e.g. "451 4.7.1 later"),
    so tests can make the sink refuse chosen recipients the way real servers do.
    """

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[SinkMessage] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    # Recipients whose message is accepted and then the connection dropped before the reply to
    # the final dot: the sender cannot know that it was delivered (RFC 1047).
    drop_after_data: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(
                SinkMessage(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        if self.drop_after_data & set(envelope.rcpt_tos):
            server.transport.close()
        return "250 Message accepted for delivery"

    def by_recipient(self) -> dict[str, list[SinkMessage]]:
        result: dict[str, list[SinkMessage]] = {}
        with self.lock:
            for message in self.messages:
                for rcpt in message.rcpt_tos:
                    result.setdefault(rcpt, []).append(message)
        return result


class Worker:
    """``celery worker`` in a subprocess, as production runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        full_env.update(env)
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks.app",
                "worker",
                "--beat",
                "--schedule",
                str(Path(env["DIGEST_DATA_DIR"]) / "celerybeat-schedule"),
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def parse_message(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def seed_sample_site(settings: Settings, subscribers: int) -> int:
    """Ingest the sample site's feeds and subscribe readers; returns the newsletter id."""
    with session_factory(settings.database_url)() as session:
        for source in register_sample_sources(session, settings.data_dir / "site", utcnow()):
            ingest_source(session, source)
        return demo_newsletter(session, subscribers).id
