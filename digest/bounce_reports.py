"""What one message arriving at the bounce mailbox reports: bounces (DSNs, RFC 3464, and the
plain-text ones some MTAs still send), complaints (ARF, RFC 5965), or nothing to act on.

Pure: bytes in, reports out; suppressing and counting is the caller's job. It never raises on
bad input, because anyone on the internet can write to the bounce mailbox.

The delivery a report is about comes only from values we signed (digest.verp), never from a
bare number: the VERP address the report was sent to (Delivered-To, X-Original-To,
Envelope-To, To), then what it quotes of our message (the DSN's X-Postfix-Sender and
X-Original-Message-ID, ARF's Original-Mail-From, the returned message's Return-Path and
Message-ID), then its In-Reply-To. The recipient is the address we sent to: Original-Recipient
before Final-Recipient (an alias's target), ARF's Original-Rcpt-To, else the original's To.
A DSN about several recipients gives one report each, all for the one delivery it names: ours
have one recipient per envelope, so several mean the receiver expanded an alias or a list.

    report says                                 kind       why
    failed, 5.1.0-3, 5.1.6, 5.1.10, 5.2.1       HARD       no such mailbox or domain, or disabled:
                                                           it will not work tomorrow either
    failed, 5.0.0, 5.5.0 or no enhanced code,   HARD       vague codes (Yahoo's 5.0.0, Outlook's
      text says "user unknown" and the like                5.5.0): the text decides, unless it
                                                           also says spam/policy/block
    failed, 5.7.x policy, 5.3.x, 5.4.x,         IGNORED    about our sending, not the address:
      5.1.7/8 sender, vague code + spam words              counted, one bad day with a provider
                                                           would suppress all of its readers
    failed, other 5.x.x (5.2.2 full, 5.2.x,     SOFT       the address may work later;
      vague codes)                                         suppressed after N
    failed, 4.x.x (retries ran out)             SOFT       may work later; suppressed after N
    4.7.x, 4.2.1, 421, rate limit, greylisting  IGNORED    throttling is about our sending, not
                                                           the address, even once retries ran out
    delayed, delivered, relayed, expanded       IGNORED    not a failure (yet)
    ARF abuse, fraud, virus                     COMPLAINT  the reader or their provider says stop,
                                                           and each one costs sender reputation
    ARF not-spam, other, auth-failure, unknown  IGNORED    no wish of the reader's to act on
    plain-text bounce (qmail, Yahoo, Exim)      as above   from the first code in its text; none:
                                                           HARD on "user unknown" text, else
                                                           IGNORED; a delay warning is IGNORED
    auto-reply, out of office, anything else    IGNORED
"""

from __future__ import annotations

import email
import enum
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from digest.verp import delivery_of, short_mac

DETAIL_LENGTH = 500


class ReportKind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    delivery_id: int | None  # HMAC-verified; None when the report cannot be attributed
    recipient: str | None  # lower-case
    status: str  # enhanced status code ("5.1.1") or ""; for ARF the feedback type
    detail: str  # one line, at most DETAIL_LENGTH characters


_HARD_STATUSES = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
_VAGUE_STATUSES = frozenset({"", "4.0.0", "5.0.0", "5.5.0"})
# Refusals about us, not the address (policy and spam blocks, authentication, our sender
# address, routing and network trouble): counting them as soft bounces would let one bad day
# with a provider suppress every one of its readers.
_ABOUT_OUR_SENDING = ("5.7.", "5.1.7", "5.1.8", "5.3.", "5.4.")
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})
_ORIGINAL_TYPES = frozenset({"message/rfc822", "text/rfc822-headers"})
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<![\d.#])([45][0-5]\d)(?=[\s:-]|$)")
_OUR_MESSAGE_ID = re.compile(r"^<?(\d{1,18})\.(\d{1,18})\.([0-9a-f]{1,64})@[^<>\s]+>?$")
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown (user|recipient|mailbox|address)|no such (user|mailbox|recipient)"
    r"|no mailbox here|recipient ?not ?found|mailbox (not found|is disabled)"
    r"|(account|mailbox|address|user)\b[^.;]{0,40}\b(does not|doesn't) exist"
    r"|doesn't have an? \S+ account|invalid (recipient|mailbox)",
    re.IGNORECASE,
)
_POLICY = re.compile(r"spam|polic|block|reputation", re.IGNORECASE)
_THROTTLING = re.compile(
    r"rate.?limit|unusual rate|throttl|gr[ae]y.?list|try (again )?later"
    r"|too many (connections|concurrent|messages from|recipients)",
    re.IGNORECASE,
)
_DELAY = re.compile(
    r"\bdelayed\b|still being retried|not yet been delivered|will (continue|keep) trying",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|failure notice|delivery (status notification|failure|has failed)"
    r"|mail delivery failed|non.?delivery|could not be delivered",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(r"out of (the )?office|automatic reply|auto.?reply", re.I)
# Possessive quantifiers and no \s* across lines: a bounce body is anyone's input, and these
# must not backtrack quadratically over a long run of dashes or of blank lines.
_COPY_MARKER = re.compile(r"^-++[^\n]*?(copy of|original message|below this line)", re.I | re.M)
_BRACKETED_ADDRESS = re.compile(r"^[ \t]*+<([^<>\s@]+@[^<>\s]+)>:?[ \t]*$", re.M)
_QUOTED_HEADER = re.compile(r"^(?:return-path|message-id):[ \t]*(\S+)", re.I | re.M)


def read_reports(raw: bytes, keys: Sequence[str]) -> list[Report]:
    """Every per-recipient report in the message (a DSN can report several recipients); a
    message that is not a report gives [Report(IGNORED, ...)] with a detail saying why. Never
    raises on bad input."""
    try:
        # compat32 is the most forgiving policy: it keeps malformed headers as plain strings
        # where the default policy raises on reading them.
        return _read(email.message_from_bytes(raw, policy=compat32), keys)
    except Exception as exc:
        # The email package has raised on odd input before (and may again): a message we
        # cannot read is one we ignore, not one that stops the mailbox.
        return [Report(ReportKind.IGNORED, None, None, "", _one_line(f"unreadable: {exc!r}"))]


def classify_smtp_reply(code: int, message: str) -> ReportKind:
    """The same classification for a reply the relay gave us at SMTP time: 5xx with a
    bad-mailbox status is HARD, other 5xx SOFT; 4xx throttling IGNORED, other 4xx SOFT."""
    if not 400 <= code < 600:
        return ReportKind.IGNORED
    match = _find_status(message, str(code)[0])
    return _classify(_status(match), code, message) or ReportKind.IGNORED


def delivery_of_message_id(keys: Sequence[str], message_id: str) -> int | None:
    """The delivery one of our Message-IDs (digest.sending.message_id) names, or None if it
    is not one of ours (any key signed)."""
    match = _OUR_MESSAGE_ID.match(message_id.strip().lower())
    if match is None:
        return None
    # The digits as written: a MAC over a re-spelt number (leading zeros) proves nothing.
    signed = f"message-id:{match[1]}.{match[2]}"
    expected = (short_mac(key, signed) for key in keys)
    return int(match[2]) if any(hmac.compare_digest(match[3], m) for m in expected) else None


def _read(msg: Message, keys: Sequence[str]) -> list[Report]:
    parts = [p for p in (msg.get_payload() if msg.is_multipart() else []) if isinstance(p, Message)]
    # By the parts present rather than the report-type parameter, which some MTAs leave out.
    by_type = {p.get_content_type(): p for p in reversed(parts)}
    originals = [m for p in parts if p.get_content_type() in _ORIGINAL_TYPES if (m := _inner(p))]
    if "message/feedback-report" in by_type:
        return [_complaint(msg, keys, parts, by_type["message/feedback-report"], originals)]
    if "message/delivery-status" in by_type:
        return _delivery_reports(msg, keys, by_type["message/delivery-status"], originals)
    if msg.get_content_type() == "multipart/report":
        kind = str(msg.get_param("report-type") or "unknown")
        return [_ignored(keys, msg, f"a report of another type ({kind})")]
    text = next((_text(p) for p in msg.walk() if p.get_content_type() == "text/plain"), "")
    if _looks_like_bounce(msg, text):
        return [_plain_bounce(msg, keys, text, originals)]
    return [_ignored(keys, msg, "an auto-reply" if _is_auto_reply(msg) else "not a report")]


def _delivery_reports(
    msg: Message, keys: Sequence[str], part: Message, originals: list[Message]
) -> list[Report]:
    # The parser gives message/delivery-status as one header-only message per field group.
    groups = [g for g in (part.get_payload() or []) if isinstance(g, Message)]
    quoted = [_header_values(g, "X-Postfix-Sender", "X-Original-Message-ID") for g in groups]
    delivery = _attribute(keys, msg, [v for vs in quoted for v in vs], originals)
    recipients = [g for g in groups if "Action" in g or "Final-Recipient" in g]
    if not recipients:
        return [Report(ReportKind.IGNORED, delivery, None, "", "a DSN without recipients")]
    return [_delivery_report(group, delivery) for group in recipients]


def _delivery_report(group: Message, delivery: int | None) -> Report:
    action = (_field(group, "Action").lower().split() or [""])[0]
    diagnostic = re.sub(r"^\w+\s*;\s*", "", _field(group, "Diagnostic-Code"))  # "smtp; 550 …"
    status = _status(_find_status(_field(group, "Status")))
    if status in _VAGUE_STATUSES:
        status = _status(_find_status(diagnostic, status[:1] or "45")) or status
    code = _SMTP_CODE.search(diagnostic)
    recipient = _address(_field(group, "Original-Recipient")) or _address(
        _field(group, "Final-Recipient")
    )
    if action == "failed" or (not action and status.startswith("5")):
        kind = _classify(status, int(code[1]) if code else None, diagnostic) or ReportKind.SOFT
    else:
        kind = ReportKind.IGNORED
    detail = diagnostic or _field(group, "Status") or f"action: {action or 'none'}"
    return Report(kind, delivery, recipient, status, _one_line(detail))


def _complaint(
    msg: Message, keys: Sequence[str], parts: list[Message], part: Message, originals: list[Message]
) -> Report:
    fields = _inner(part) or Message()
    feedback_type = _field(fields, "Feedback-Type").lower()
    delivery = _attribute(keys, msg, [_field(fields, "Original-Mail-From")], originals)
    # Outlook's JMRP and AOL redact the reader's address; _address drops the placeholder.
    candidates = [_field(fields, "Original-Rcpt-To"), *(_field(m, "To") for m in originals)]
    recipient = next((a for c in candidates if (a := _address(c))), None)
    kind = ReportKind.COMPLAINT if feedback_type in _COMPLAINT_TYPES else ReportKind.IGNORED
    text = next((_text(p) for p in parts if p.get_content_type() == "text/plain"), "")
    detail = _one_line(text or f"feedback report: {feedback_type or 'no type'}")
    return Report(kind, delivery, recipient, feedback_type, detail)


def _plain_bounce(msg: Message, keys: Sequence[str], text: str, originals: list[Message]) -> Report:
    """The common non-MIME shapes (qmail, Yahoo, Exim): the notice, then a copy of ours."""
    cut = _COPY_MARKER.search(text)
    notice = text[: cut.start()] if cut else text
    delivery = _attribute(keys, msg, _QUOTED_HEADER.findall(text), originals)
    failed = _field(msg, "X-Failed-Recipients").split(",")[0]  # Exim
    bracketed = _BRACKETED_ADDRESS.search(notice)  # qmail, Yahoo: "<reader@example.org>:"
    recipient = _address(failed) or (_address(bracketed[1]) if bracketed else None)
    found = _find_status(notice, "45")
    code = _SMTP_CODE.search(notice)
    anchor = min((m.start() for m in (found, code) if m), default=0)
    detail = _one_line(notice[notice.rfind("\n", 0, anchor) + 1 :])
    if _DELAY.search(f"{_field(msg, 'Subject')}\n{notice}"):
        return Report(ReportKind.IGNORED, delivery, recipient, _status(found), detail)
    kind = _classify(_status(found), int(code[1]) if code else None, notice)
    if kind is None:
        kind = ReportKind.HARD if _says_unknown_user(notice) else ReportKind.IGNORED
    return Report(kind, delivery, recipient, _status(found), detail)


def _classify(status: str, code: int | None, text: str) -> ReportKind | None:
    """The kind a failure's enhanced status (else SMTP code) and text make; None if neither."""
    reply_class = status[:1] or (str(code)[:1] if code else "")
    if reply_class == "4":
        throttled = status.startswith("4.7.") or status == "4.2.1" or code == 421
        return ReportKind.IGNORED if throttled or _THROTTLING.search(text) else ReportKind.SOFT
    if reply_class == "5":
        if status in _HARD_STATUSES:
            return ReportKind.HARD
        if status in _VAGUE_STATUSES and _says_unknown_user(text):
            return ReportKind.HARD
        if status.startswith(_ABOUT_OUR_SENDING) or (
            status in _VAGUE_STATUSES and _POLICY.search(text)
        ):
            return ReportKind.IGNORED
        return ReportKind.SOFT
    return ReportKind.IGNORED if reply_class else None


def _says_unknown_user(text: str) -> bool:
    # "mailbox unavailable" is RFC 5321's stock text for any 550, policy refusals included, so
    # it is not taken for a missing mailbox; policy words veto the rest.
    return bool(_UNKNOWN_USER.search(text)) and not _POLICY.search(text)


def _attribute(
    keys: Sequence[str], msg: Message, quoted: Iterable[str], originals: list[Message]
) -> int | None:
    """The first delivery signed by us among the report's envelope headers, then what it
    quotes of our message (best first)."""
    candidates = [
        *_header_values(msg, *_ENVELOPE_HEADERS),
        *quoted,
        *(v for m in originals for v in _header_values(m, "Return-Path", "Message-ID")),
        *_header_values(msg, "In-Reply-To"),  # Gmail, Outlook and auto-replies name ours
    ]
    return next((d for c in candidates if (d := _ours(keys, c)) is not None), None)


def _ours(keys: Sequence[str], value: str) -> int | None:
    value = re.sub(r"^\s*rfc822\s*;", "", value, flags=re.I)
    # No real address is longer, and a longer digit run would make int() refuse it.
    addresses = [a for _, a in getaddresses([value[:998]]) if 0 < len(a) <= 254]
    found = next((d for a in addresses if (d := delivery_of(keys, a)) is not None), None)
    return found if found is not None else delivery_of_message_id(keys, value[:998])


def _inner(part: Message) -> Message | None:
    """The message a message/* part holds, or the headers a text/rfc822-headers part holds."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    body = part.get_payload(decode=True)
    return email.message_from_bytes(body, policy=compat32) if isinstance(body, bytes) else None


def _text(part: Message) -> str:
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes):
        return ""
    try:
        text = body.decode(part.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError):  # a charset Python does not know, or a mangled name
        text = body.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")  # the parser keeps a CRLF message's line ends


def _looks_like_bounce(msg: Message, text: str) -> bool:
    sender = parseaddr(_field(msg, "From"))[1].lower()
    return (
        sender.startswith(("mailer-daemon@", "postmaster@"))
        or bool(_BOUNCE_SUBJECT.search(_field(msg, "Subject")))
        or "X-Failed-Recipients" in msg
        or "qmail-send program" in text
    )


def _is_auto_reply(msg: Message) -> bool:
    return (
        _field(msg, "Auto-Submitted").lower() not in ("", "no")
        or "X-Autoreply" in msg
        or "X-Autorespond" in msg
        or _field(msg, "Precedence").lower() == "auto_reply"
        or bool(_AUTO_REPLY_SUBJECT.search(_field(msg, "Subject")))
    )


def _ignored(keys: Sequence[str], msg: Message, why: str) -> Report:
    return Report(ReportKind.IGNORED, _attribute(keys, msg, [], []), None, "", _one_line(why))


def _find_status(text: str, classes: str = "245") -> re.Match[str] | None:
    return next((m for m in _STATUS.finditer(text) if m[1] in classes), None)


def _status(match: re.Match[str] | None) -> str:
    return f"{match[1]}.{int(match[2])}.{int(match[3])}" if match else ""


def _address(value: str) -> str | None:
    address = parseaddr(value.rpartition(";")[2])[1].strip().lower()
    if "@" not in address or "redacted" in address or len(address) > 254:
        return None
    return address


def _header_values(msg: Message, *names: str) -> list[str]:
    return [str(v) for name in names for v in msg.get_all(name) or ()]


def _field(msg: Message, name: str) -> str:
    return _one_line(str(msg.get(name) or ""))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:DETAIL_LENGTH]
