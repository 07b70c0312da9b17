"""Composing messages and handing them to a mail transport.

The MIME is assembled by hand: the standard library's EmailMessage costs ~4 ms per message, the
most expensive step of a send, while a multipart/alternative with quoted-printable parts is a
few string joins. Lines end in CRLF and stay within 78 characters (a header value that cannot
be folded, such as a long URL, sits alone on a continuation line), so strict SMTP servers accept
it as is.
"""

from __future__ import annotations

import binascii
import functools
import logging
import os
import secrets
import smtplib
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import dkim

SMTP_TIMEOUT = 30.0
MAX_LINE = 78
_HEADER_JUNK = str.maketrans("", "", "\r\n\0")

log = logging.getLogger(__name__)


class TransportError(Exception):
    """Base of the outcomes a transport reports for one message."""


class TransientError(TransportError):
    """This recipient is refused for now (SMTP 4xx): try it again later."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class PermanentError(TransportError):
    """This recipient is refused for good (SMTP 5xx)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UncertainOutcome(TransportError):
    """The connection broke after the final dot, before the server's reply: the message may
    have been delivered (RFC 1047), so it must never be resent automatically."""


class TransportUnavailable(TransportError):
    """The relay takes no message now (connection, TLS, authentication, sender refused, 421,
    or the connection broke before the message was complete). Nothing of the current message
    was delivered and the recipient is not to blame: stop the batch and try it later."""


def clean_header(value: str) -> str:
    """CR, LF and NUL in a header value would let a subject or a name inject headers."""
    return value.translate(_HEADER_JUNK)


# Memoised: an edition's From, Subject and List-Id are the same in every message, and RFC 2047
# encoding of a non-ASCII value costs ~1 ms (bench/RESULTS.md, sending end to end).
@functools.lru_cache(maxsize=4096)
def _header(name: str, value: str) -> str:
    """One header, folded to 78 characters where the value allows it (RFC 5322 2.1.1).

    Non-ASCII values become RFC 2047 encoded words, which fold anywhere. ASCII values fold at
    spaces; a single word too long for the first line (a URL) moves to a continuation line of
    its own, which stays far below the 998-character hard limit.
    """
    value = clean_header(value)
    if not value.isascii():
        return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    lines = [f"{name}:"]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > MAX_LINE and lines[-1].strip():
            lines.append("")
        lines[-1] += " " + word
    return "\r\n".join(lines)


@functools.lru_cache(maxsize=4096)
def _address(value: str) -> str:
    name, addr = parseaddr(clean_header(value))
    return formataddr((name, addr), charset="utf-8")


def _qp(body: str) -> str:
    # Only CR, LF and CRLF end a line (str.splitlines() would also split on U+2028 and
    # friends); three replaces cost a tenth of a regular expression's split on a 20 kB body.
    lf = body.rstrip("\r\n").replace("\r\n", "\n").replace("\r", "\n")
    crlf = lf.replace("\n", "\r\n") + "\r\n"
    return binascii.b2a_qp(crlf.encode("utf-8"), quotetabs=False, istext=True).decode("ascii")


# Signed when present. List-Unsubscribe and List-Unsubscribe-Post must be covered for Gmail and
# Yahoo to offer one-click unsubscribe; Feedback-ID for Gmail's feedback loop to trust it.
DKIM_HEADERS = (
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id",
)  # fmt: skip


def dkim_sign(message: bytes, selector: str, domain: str, private_key: bytes) -> bytes:
    """The message with a DKIM-Signature header (rsa-sha256, relaxed/relaxed) in front."""
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(DKIM_HEADERS),
    )
    return signature + message


def compose(
    *,
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A multipart/alternative message: text first, HTML last (clients show the last part they
    can display)."""
    boundary = "=_" + secrets.token_hex(16)
    lines = [
        _header("From", _address(sender)),
        _header("To", _address(recipient)),
        _header("Subject", subject),
        _header("Date", format_datetime(date)),
        _header("Message-ID", message_id),
        *(_header(clean_header(name), value) for name, value in headers),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"',
        "",
    ]
    for subtype, body in (("plain", text), ("html", html)):
        lines += [
            f"--{boundary}",
            f"Content-Type: text/{subtype}; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            _qp(body),
        ]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("ascii")


class Sender(Protocol):
    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        key: str,
        begin: Callable[[], bool],
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:
        """Hand one message over, or raise a TransportError subclass.

        ``begin`` is called once the recipient is accepted, before the message itself goes
        out; when it returns False (the delivery was cancelled meanwhile) nothing is sent and
        ``send`` returns False. ``meanwhile`` is called once the whole message has gone out,
        while the relay decides on it, so the caller's next piece of work overlaps the
        relay's; it must not raise. ``key`` is unique per delivery and stable across retries.
        """


class Outbox:
    """``file://DIR``: each message becomes ``DIR/<key>.eml``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        key: str,
        begin: Callable[[], bool],
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:
        if not begin():
            return False
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(message)
            os.replace(tmp, self.directory / f"{key}.eml")
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise TransportUnavailable(
                f"cannot write to the outbox {self.directory}: {exc}"
            ) from exc
        if meanwhile is not None:
            meanwhile()
        return True


def _dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: leading dots doubled, CRLF.CRLF at the end (RFC 5321 4.5.2)."""
    body = (b"." if message.startswith(b".") else b"") + message.replace(b"\n.", b"\n..")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


@dataclass(frozen=True)
class Relay:
    """One relay from DIGEST_SMTP_URL."""

    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> Relay:
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if implicit_tls else 25),
            implicit_tls=implicit_tls,
            starttls=options.get("starttls", "").lower() in ("1", "true", "yes"),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def open(self) -> smtplib.SMTP:
        # A TLS context loads the system's CA store (~25 ms): only when TLS is used.
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT)
        try:
            if self.starttls and not self.implicit_tls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            # mail()/rcpt() below do not greet by themselves (only sendmail() does).
            smtp.ehlo_or_helo_if_needed()
        except BaseException:
            smtp.close()  # a relay refusing TLS or the login: no socket left behind
            raise
        return smtp


class SmtpSender:
    """One SMTP connection, opened on first use and reused for every message of a batch.

    MAIL, RCPT and DATA are driven one by one so that every failure can be placed. Until the
    final dot is sent the message certainly was not delivered; only a connection lost while
    waiting for the reply to the final dot leaves the outcome unknown.

    With several relays, the session goes to the first that opens one (connects, TLS, login,
    greeting), in the order given: a relay that is down costs a connection attempt per batch,
    never a message. A relay that fails later, mid-session, stops the batch as with one relay.
    """

    def __init__(self, relays: Sequence[Relay]) -> None:
        if not relays:
            raise ValueError("at least one relay is needed")
        self.relays = list(relays)
        self._relay: Relay | None = None  # the one whose session is (or was last) open
        self._smtp: smtplib.SMTP | None = None
        # Set while a message's exchange is under way: if it never finishes (an exception from
        # outside, such as a task's time limit), the connection's state is unknown.
        self._mid_exchange = False

    @property
    def host(self) -> str:
        return (self._relay or self.relays[0]).host

    @classmethod
    def from_url(cls, url: str) -> SmtpSender:
        return cls([Relay.from_url(part.strip()) for part in url.split(",") if part.strip()])

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        failures = []
        # A session opened again within the batch goes first to the relay that took the last.
        relays = sorted(self.relays, key=lambda relay: relay is not self._relay)
        for relay in relays:
            try:
                self._smtp = relay.open()
            except (smtplib.SMTPException, OSError) as exc:
                failures.append(f"{relay.host}:{relay.port}: {exc}")
                if relay is not relays[-1]:
                    log.warning(
                        "relay %s:%s failed (%s): trying the next", relay.host, relay.port, exc
                    )
                continue
            self._relay = relay
            return self._smtp
        raise TransportUnavailable(f"cannot open an SMTP session with {'; '.join(failures)}")

    def _drop(self) -> None:
        if self._smtp is not None:
            with suppress(smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    def _refused(self, stage: str, code: int, reply: bytes) -> NoReturn:
        """Raise for a refusal, leaving the connection ready for the next message."""
        text = f"{code} {reply.decode('utf-8', 'replace')}"
        if code == 421:  # the server is closing the connection: not this recipient's fault
            self._drop()
            raise TransportUnavailable(f"{stage}: {text}")
        try:
            self._connection().rset()
        except (smtplib.SMTPException, OSError, TransportUnavailable):
            self._drop()
        if stage == "MAIL FROM":  # the sender is refused: every recipient would be
            raise TransportUnavailable(f"{stage}: {text}")
        if code >= 500:
            raise PermanentError(f"{stage}: {text}", code)
        raise TransientError(f"{stage}: {text}", code)

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        key: str,
        begin: Callable[[], bool],
        meanwhile: Callable[[], None] | None = None,
    ) -> bool:
        if self._mid_exchange:
            self._drop()  # the last exchange never finished: its replies would come first
        self._mid_exchange = True
        try:
            accepted = self._exchange(envelope_from, recipient, message, begin, meanwhile)
        except TransportError:
            self._mid_exchange = False  # placed and handled: the connection is usable or gone
            raise
        self._mid_exchange = False
        return accepted

    def _exchange(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        begin: Callable[[], bool],
        meanwhile: Callable[[], None] | None,
    ) -> bool:
        smtp = self._connection()
        try:
            code, reply = smtp.mail(envelope_from)
            if code >= 400:
                self._refused("MAIL FROM", code, reply)
            code, reply = smtp.rcpt(recipient)
            if code >= 400:
                self._refused("RCPT TO", code, reply)
            # DATA goes out before ``begin`` records the message's entry into the SMTP window,
            # so that the relay's answer and the database's are awaited at once; the message
            # itself goes out only once both are in.
            smtp.putcmd("data")
            if not begin():
                # Only a connection closed before the final dot takes DATA back: the relay
                # discards a message it did not receive whole. The next message opens another.
                self._drop()
                return False
            code, reply = smtp.getreply()
            if code != 354:
                self._refused("DATA", code, reply)
            smtp.send(_dot_stuffed(message))
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TransportUnavailable(f"connection to {self.host} lost: {exc}") from exc
        if meanwhile is not None:
            meanwhile()  # the relay is busy with the message: its reply will wait for us
        try:
            code, reply = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise UncertainOutcome(f"connection lost after the final dot: {exc}") from exc
        if code >= 400:
            self._refused("end of DATA", code, reply)
        return True

    def close(self) -> None:
        if self._mid_exchange:
            # Cut off mid-exchange: a QUIT would wait behind the unanswered command.
            self._drop()
        if self._smtp is not None:
            with suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None


@contextmanager
def open_sender(smtp_url: str) -> Iterator[Sender]:
    """The transport that ``DIGEST_SMTP_URL`` names, closed when the batch is done."""
    scheme = urlsplit(smtp_url).scheme
    if scheme == "file":
        yield Outbox(Path(unquote(urlsplit(smtp_url).path)))
    elif scheme in ("smtp", "smtps"):
        sender = SmtpSender.from_url(smtp_url)
        try:
            yield sender
        finally:
            sender.close()
    else:
        raise ValueError(
            f"DIGEST_SMTP_URL scheme {scheme!r} is not supported: use smtp://, smtps:// or file://"
        )
