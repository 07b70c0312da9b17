"""Helpers shared by the tests: service checks, SMTP sinks (aiosmtpd, Postfix's smtp-sink), a
worker process, seed data, a local web site."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.db import migrate, session_factory
from digest.editions import prepare_edition
from digest.fetch import Fetcher
from digest.ingest import ingest_source
from digest.models import (
    FINAL_DELIVERY_STATES,
    Click,
    ClickKind,
    Delivery,
    Edition,
    Newsletter,
    Open,
    OpenKind,
    Subscriber,
    utcnow,
)
from digest.sample_site import demo_newsletter, register_sample_sources
from digest.sending import delivery_counts, send_batch


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
    received_at: float = field(default_factory=time.monotonic)


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
    # Recipient → the reply to its final dot (e.g. "554 5.7.1 Rejected as spam").
    data_replies: dict[str, str] = field(default_factory=dict)
    # Recipients whose final dot gets no reply for a long time (a worker can be killed there).
    stall_data: set[str] = field(default_factory=set)
    # Seconds every final dot waits for its reply: a relay slow enough to stop a worker mid-batch.
    data_delay: float = 0.0
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
        rcpts = set(envelope.rcpt_tos)
        if self.drop_after_data & rcpts:
            server.transport.close()
        if self.stall_data & rcpts:
            await asyncio.sleep(120)
        await asyncio.sleep(self.data_delay)
        for rcpt in rcpts & self.data_replies.keys():
            return self.data_replies[rcpt]
        return "250 Message accepted for delivery"

    def by_recipient(self) -> dict[str, list[SinkMessage]]:
        result: dict[str, list[SinkMessage]] = {}
        with self.lock:
            for message in self.messages:
                for rcpt in message.rcpt_tos:
                    result.setdefault(rcpt, []).append(message)
        return result


SMTP_SINK = Path("/usr/sbin/smtp-sink")  # Debian's postfix package
# smtp-sink refuses to run as root without -u: after binding, it drops to this user, who must be
# able to write the dump directory.
SMTP_SINK_USER = "nobody"
# The options whose argument is a list of commands to refuse (-f 5xx, -r 4xx), hang up after
# without a reply (-q), or answer with 421 and hang up (-Q).
_SINK_FAULT_OPTIONS = frozenset({"-f", "-r", "-q", "-Q"})


class PostfixSink:
    """Postfix's smtp-sink (``man smtp-sink``) on 127.0.0.1 and a free port, with fault flags
    given as separate arguments (``["-r", "RCPT"]``, ``["-q", "."]``, ``["-W", ".:2"]``), and
    each message it reads dumped to its own file in ``dump_dir`` (``-d``).

    smtp-sink opens a dump at MAIL, deletes it when the transaction is abandoned (RSET, EHLO,
    a disconnect) and closes it at the final dot, *before* it answers the dot: a dump is a
    message read in full, whatever the answer. Read the dumps once the client is done.
    """

    def __init__(
        self, flags: Sequence[str], dump_dir: Path, log_path: Path, binary: Path = SMTP_SINK
    ) -> None:
        self.flags = tuple(flags)
        self.dump_dir = dump_dir
        self.log_path = log_path  # its diagnostics, and its counters (-c) for reading a failure
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam(SMTP_SINK_USER)
            os.chown(self.dump_dir, account.pw_uid, account.pw_gid)
            user = ["-u", SMTP_SINK_USER]
        # free_port() releases the port before smtp-sink binds it: another process may take it
        # meanwhile, so a bind failure is retried on a new port.
        for _ in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.binary), *user, "-c", "-d", f"{self.dump_dir}/", *self.flags,
                     f"127.0.0.1:{self.port}", "64"],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            if self._listening(timeout):
                return
            if "address already in use" not in self.output().lower():
                break
        raise AssertionError(f"smtp-sink {' '.join(self.flags)} did not start:\n{self.output()}")

    def _listening(self, timeout: float) -> bool:
        """True once the sink accepts a connection; False if it exited first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try:
                # A session of its own in the sink's counters, and nothing else: no MAIL.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"smtp-sink not listening after {timeout}s") from None
                time.sleep(0.02)
        return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def received(self) -> Counter[str]:
        """Recipient → messages the sink read through their final dot (its dump files)."""
        received: Counter[str] = Counter()
        for dump in self.dump_dir.iterdir():
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("Received:"):
                    break  # the end of the headers smtp-sink writes; the message follows
                if line.startswith("X-Rcpt-Args:"):
                    # "X-Rcpt-Args: <reader001@example.org>", then any ESMTP parameters.
                    received[line.split()[1].strip("<>")] += 1
        return received

    @property
    def final_dot(self) -> str:
        """How the sink answers each final dot, by its flags: "taken" (250, perhaps after a
        -W delay, to a client that gave up waiting), "refused" (4xx or 5xx from -r or -f, 421
        from -Q) or "unanswered" (-q: it hangs up, and the message may have been delivered)."""
        # Options may repeat (-f RCPT -f .): smtp-sink applies each.
        at_dot = {
            option
            for option, commands in zip(self.flags, self.flags[1:], strict=False)
            if option in _SINK_FAULT_OPTIONS and "." in re.split(r"[\s,]+", commands)
        }
        if "-q" in at_dot:
            return "unanswered"
        return "refused" if at_dot else "taken"

    def accepted(self) -> Counter[str]:
        """Recipient → messages the sink took: answered their final dot with 250. The dump is
        written before the answer, so it is every dump, or none when the flags refuse or drop
        the final dot."""
        return self.received() if self.final_dot == "taken" else Counter()


class Service:
    """A product process (a worker, a beat) in a subprocess, as production runs it, with its
    output in a log file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        full_env.update(env)
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            command, env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def says(self, phrase: str) -> Callable[[], bool]:
        """A wait_until predicate: the phrase is in the output (failing if the process died
        without saying it)."""

        def check() -> bool:
            said = phrase in self.output()
            assert said or self.proc.poll() is None, self.output()
            return said

        return check

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def worker_command(env: dict[str, str]) -> list[str]:
    """``celery worker`` with its embedded beat, as a development install runs it."""
    schedule = Path(env["DIGEST_DATA_DIR"]) / "celerybeat-schedule"
    return [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "--beat",
            "--schedule", str(schedule), "--concurrency", "2"]  # fmt: skip


def deliveries_by_email(sessions: sessionmaker[Session], edition_id: int) -> dict[str, Delivery]:
    """The edition's delivery rows by their reader's address."""
    with sessions() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.edition_id == edition_id)
        ).all()
    return {email: delivery for email, delivery in rows}


def all_final(settings: Settings, edition_id: int, total: int) -> Callable[[], bool]:
    """A wait_until predicate: all ``total`` deliveries of the edition are in a final state."""
    sessions = session_factory(settings.database_url)

    def check() -> bool:
        with sessions() as session:
            counts = delivery_counts(session, edition_id)
        return sum(counts[s] for s in FINAL_DELIVERY_STATES) == total

    return check


def settled_count(count: Callable[[], int], expected: int, what: str) -> None:
    """Wait for ``count`` to reach ``expected``, then make sure it stays there for a while
    (tracking events are stored by a background flush, so "nothing more" takes a moment)."""
    wait_until(lambda: count() == expected, 10, what)
    time.sleep(0.3)
    assert count() == expected, f"{what}: changed after settling"


def parse_message(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def seed_sample_site(settings: Settings, subscribers: int) -> int:
    """Ingest the sample site's feeds and subscribe readers; returns the newsletter id."""
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as session, Fetcher.from_settings(settings) as f:
        for source in register_sample_sources(session, settings.data_dir / "site", utcnow()):
            ingest_source(session, source, f)
        return demo_newsletter(session, subscribers).id


def prepare_sample_edition(settings: Settings, subscribers: int) -> Edition:
    """The sample site ingested, ``subscribers`` readers, and today's edition prepared."""
    newsletter_id = seed_sample_site(settings, subscribers)
    with session_factory(settings.database_url)() as session:
        now = utcnow()
        newsletter = session.get_one(Newsletter, newsletter_id)
        return prepare_edition(session, newsletter, now.date(), now)


def sent_with_engagement(
    settings: Settings,
    subscribers: int,
    opens: Sequence[OpenKind],
    clicks: Sequence[tuple[int, ClickKind]],
) -> tuple[Edition, dict[str, Any]]:
    """The sample edition sent to ``subscribers`` readers, then events recorded as if tracked:
    ``opens[n]`` for the n-th delivery, and each (n, kind) a click on the first story by the
    n-th delivery. Returns the edition and its first story item (story_id, link_id...)."""
    edition = prepare_sample_edition(settings, subscribers)
    send_until_done(settings, edition.id)
    first = edition.content["blocks"][0]["items"][0]
    with session_factory(settings.database_url)() as session:
        deliveries = session.scalars(
            select(Delivery.id).where(Delivery.edition_id == edition.id).order_by(Delivery.id)
        ).all()
        session.add_all(
            [Open(delivery_id=deliveries[n], kind=kind) for n, kind in enumerate(opens)]
            + [
                Click(link_id=first["link_id"], delivery_id=deliveries[n], kind=kind)
                for n, kind in clicks
            ]
        )
        session.commit()
    return edition, first


def send_until_done(settings: Settings, edition_id: int) -> None:
    """Send batches in this process until nothing is left to claim."""
    sessions = session_factory(settings.database_url)
    while send_batch(sessions, settings, edition_id):
        pass


class ScriptedSmtp:
    """A socket-level SMTP peer that answers by a script, to place failures exactly.

    ``script`` maps a stage ("connect", "MAIL", "RCPT", "DATA", "dot") to a reply line, or to
    "close" to drop the connection at that point. Unscripted stages succeed.
    """

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.commands: list[str] = []  # the verbs received, upper-cased
        self.messages = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            # A client that hangs up mid-session (as the sender does to take DATA back) must
            # not stop the server.
            with conn, conn.makefile("rb") as lines, suppress(OSError):
                self._session(conn, lines)

    def _answer(self, conn: socket.socket, stage: str, default: str) -> bool:
        reply = self.script.get(stage, default)
        if reply == "close":
            return False
        conn.sendall(reply.encode() + b"\r\n")
        return True

    def _session(self, conn: socket.socket, lines: Any) -> None:
        if not self._answer(conn, "connect", "220 scripted ESMTP"):
            return
        for raw in lines:
            verb = raw.decode().strip().split(" ", 1)[0].split(":", 1)[0].upper()
            self.commands.append(verb)
            if verb in ("EHLO", "HELO"):
                conn.sendall(b"250 scripted\r\n")
            elif verb in ("MAIL", "RCPT"):
                if not self._answer(conn, verb, "250 OK"):
                    return
            elif verb == "DATA":
                if not self._answer(conn, "DATA", "354 go ahead"):
                    return
                if self.script.get("DATA", "354").startswith("354"):
                    for body in lines:
                        if body == b".\r\n":
                            break
                    else:
                        return  # closed before the final dot: no message
                    self.messages += 1
                    if not self._answer(conn, "dot", "250 queued"):
                        return
            elif verb == "RSET":
                conn.sendall(b"250 reset\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 unknown\r\n")


@dataclass(frozen=True)
class Page:
    """One answer of a LocalSite. ``delay`` stalls before answering and ``drip`` between the
    body's bytes: a server that hangs, and one that trickles so slowly that only a deadline on
    the whole response stops it."""

    body: bytes = b""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0


def redirect(location: str, status: int = 302) -> Page:
    return Page(b"", status, {"Location": location})


@dataclass(frozen=True)
class SeenRequest:
    path: str
    headers: Mapping[str, str]


class LocalSite:
    """A real HTTP server on 127.0.0.1 and a free port, serving ``pages`` by path (the query is
    ignored; an unknown path is a 404) and recording every request it receives.

    It answers conditional GETs as real servers do: 304 when the request's If-None-Match or
    If-Modified-Since equals the page's ETag or Last-Modified.
    """

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        # A short poll keeps shutdown (at every test's teardown) from waiting half a second.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        with self._lock:
            self.requests.append(SeenRequest(path, dict(handler.headers.items())))
        page = self.pages.get(path, Page(b"not found", 404))
        if page.delay and self._closing.wait(page.delay):
            return
        etag, modified = page.headers.get("ETag"), page.headers.get("Last-Modified")
        unchanged = (etag is not None and handler.headers.get("If-None-Match") == etag) or (
            modified is not None and handler.headers.get("If-Modified-Since") == modified
        )
        body = b"" if unchanged else page.body
        handler.send_response(304 if unchanged else page.status)
        for name, value in page.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if not page.drip:
                handler.wfile.write(body)
                return
            for offset in range(len(body)):
                handler.wfile.write(body[offset : offset + 1])
                handler.wfile.flush()
                if self._closing.wait(page.drip):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which is what a capped fetch should do

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
