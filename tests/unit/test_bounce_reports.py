"""Bounce and complaint reports: each fixture in tests/fixtures/bounces (see its README) read
with our VERP address and Message-ID filled in, plus SMTP-time replies and arbitrary input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.bounce_reports import (
    DETAIL_LENGTH,
    Report,
    ReportKind,
    classify_smtp_reply,
    delivery_of_message_id,
    read_reports,
)
from digest.sending import message_id
from digest.verp import verp_address

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bounces"
KEYS = ("newer-key", "test-key")  # newest first: what we sent was signed with "test-key"
EDITION, DELIVERY = 42, 4711
VERP = verp_address(KEYS, "bounces.news.example.com", DELIVERY)
MESSAGE_ID = message_id(SimpleNamespace(secret_keys=KEYS), "news.example.com", EDITION, DELIVERY)
PLACEHOLDERS = {
    "{{VERP}}": VERP,
    "{{MESSAGE_ID}}": MESSAGE_ID,
    "{{FORGED_VERP}}": f"bounces+{DELIVERY}-0123456789ab@bounces.news.example.com",
    "{{FORGED_MESSAGE_ID}}": f"<{EDITION}.{DELIVERY}.0123456789ab@news.example.com>",
}

HARD, SOFT, COMPLAINT, IGNORED = (
    ReportKind.HARD,
    ReportKind.SOFT,
    ReportKind.COMPLAINT,
    ReportKind.IGNORED,
)
D = DELIVERY

# fixture: [(kind, delivery_id, recipient, status), ...] one per report, in order
EXPECTED: dict[str, list[tuple[ReportKind, int | None, str | None, str]]] = {
    # Action failed after retries of a 4xx (426 timed out): may work later.
    "rfc3464-simple": [(SOFT, D, "louisl@larry.slip.umd.edu", "4.0.0")],
    # 5.0.0 says nothing: "not a registered gateway user" is no "user unknown", "550 user
    # unknown" is; the delayed one is no failure yet.
    "rfc3464-multi-recipient": [
        (SOFT, D, "arathib@vnet.ibm.com", "5.0.0"),
        (IGNORED, D, "johnh@hpnjld.njd.hp.com", "4.0.0"),
        (HARD, D, "wsnell@sdcc13.ucsd.edu", "5.0.0"),
    ],
    "rfc5965-abuse": [(COMPLAINT, D, "user@example.com", "abuse")],
    # Original-Recipient (what we sent to) wins over Final-Recipient (the alias's target).
    "postfix-user-unknown": [(HARD, D, "reader@example.org", "5.1.1")],
    "gmail-no-such-user": [(HARD, D, "reader@example.com", "5.1.1")],
    "outlook-recipient-not-found": [(HARD, D, "reader@contoso.example", "5.1.10")],
    # Sent to the From address (no VERP): the returned Message-ID names the delivery.
    "outlook-policy-block": [(IGNORED, D, "editor@fabrikam.example", "5.7.1")],
    "yahoo-plain-no-account": [(HARD, D, "reader@yahoo.example", "")],
    "yahoo-dsn-no-account": [(HARD, D, "reader@yahoo.example", "5.0.0")],
    "postfix-mailbox-full": [(SOFT, D, "busy.reader@example.net", "5.2.2")],
    "sendmail-expired-4.2.2": [(SOFT, D, "full.reader@example.net", "4.2.2")],
    "postfix-delayed-4.7.0": [(IGNORED, D, "slow.reader@example.com", "4.7.0")],
    # Retries ran out because Gmail throttled us: our reputation, not the reader's address.
    "postfix-expired-rate-limited-4.7.28": [(IGNORED, D, "reader@gmail.example", "4.7.28")],
    # Headers only; attributed by the original's Message-ID.
    "yahoo-cfl-complaint": [(COMPLAINT, D, "reader@yahoo.example", "abuse")],
    # The reader's address is redacted: the Message-ID still says who complained.
    "outlook-jmrp-complaint": [(COMPLAINT, D, None, "abuse")],
    # No Message-ID kept: the original's Return-Path (our VERP address) says who.
    "aol-arf-complaint": [(COMPLAINT, D, "reader@aol.example", "abuse")],
    "out-of-office": [(IGNORED, D, None, "")],
    "qmail-user-unknown": [(HARD, D, "old.reader@example.org", "5.1.1")],
    "exim-user-unknown": [(HARD, D, "gone.reader@example.net", "5.2.1")],
    # A warning that delivery goes on is no failure, whatever code it quotes.
    "exim-delay-warning": [(IGNORED, D, "slow.reader@example.net", "4.3.0")],
    # A bounce for a delivery id with a MAC we never made is attributed to nobody.
    "forged-verp": [(HARD, None, "victim@example.com", "5.1.1")],
    "not-a-report": [(IGNORED, None, None, "")],
}


def fixture(name: str, newline: str = "\n") -> bytes:
    text = (FIXTURES / f"{name}.eml").read_text(encoding="utf-8")
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text.replace("\n", newline).encode()


def test_every_fixture_is_expected_and_every_expectation_has_its_fixture() -> None:
    assert {p.stem for p in FIXTURES.glob("*.eml")} == set(EXPECTED)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_fixture_reads_as_expected(name: str, newline: str) -> None:
    reports = read_reports(fixture(name, newline), KEYS)
    got = [(r.kind, r.delivery_id, r.recipient, r.status) for r in reports]
    assert got == EXPECTED[name]
    for report in reports:
        assert_well_formed(report)
        assert not report.detail.startswith("unreadable")


def test_details_say_what_happened() -> None:
    [gmail] = read_reports(fixture("gmail-no-such-user"), KEYS)
    assert gmail.detail.startswith("550-5.1.1 The email account that you tried to reach does")
    [qmail] = read_reports(fixture("qmail-user-unknown"), KEYS)
    assert qmail.detail.startswith("Remote host said: 550 5.1.1 <old.reader@example.org>")
    [complaint] = read_reports(fixture("aol-arf-complaint"), KEYS)
    assert complaint.detail.startswith("This is an email abuse report")
    [auto_reply] = read_reports(fixture("out-of-office"), KEYS)
    assert auto_reply.detail == "an auto-reply"


@pytest.mark.parametrize(
    ("feedback_type", "kind"),
    [
        ("abuse", COMPLAINT),
        ("fraud", COMPLAINT),
        ("virus", COMPLAINT),
        ("not-spam", IGNORED),
        ("other", IGNORED),
        ("auth-failure", IGNORED),
        ("", IGNORED),
    ],
)
def test_only_abuse_fraud_and_virus_feedback_are_complaints(feedback_type, kind) -> None:
    raw = fixture("rfc5965-abuse").replace(
        b"Feedback-Type: abuse", f"Feedback-Type: {feedback_type}".encode()
    )
    [report] = read_reports(raw, KEYS)
    assert (report.kind, report.status, report.delivery_id) == (kind, feedback_type, DELIVERY)


def test_a_report_read_with_keys_that_never_signed_it_is_not_attributed() -> None:
    reports = read_reports(fixture("postfix-user-unknown"), ("someone-else",))
    assert [(r.kind, r.delivery_id) for r in reports] == [(HARD, None)]


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff\xfe garbage \x80\x81", b"\r\n\r\n", b"Content-Type: multipart/report\n\n"],
    ids=["empty", "garbage", "blank", "report-without-parts"],
)
def test_what_is_not_a_message_is_ignored(raw: bytes) -> None:
    [report] = read_reports(raw, KEYS)
    assert (report.kind, report.delivery_id, report.recipient) == (IGNORED, None, None)
    assert report.detail


BOUNCE_HEAD = b"From: MAILER-DAEMON@example.org\nSubject: failure notice\n\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "raw",
    [
        BOUNCE_HEAD + b"\n" * 300_000 + b"x",
        BOUNCE_HEAD + b"-" * 300_000,
        BOUNCE_HEAD + b"<" + b"a@" * 150_000,
        b"To: bounces+" + b"9" * 100_000 + b"-abc@x\n\nhi",
        b"In-Reply-To: <" + b"1" * 100_000 + b".2.abc@x>\n\nhi",
        b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i)
            for i in range(3000)
        ),
    ],
    ids=["blank-lines", "dashes", "at-signs", "long-verp", "long-message-id", "deep-nesting"],
)
def test_hostile_input_is_ignored_quickly(raw: bytes) -> None:
    # Anyone can write to the bounce mailbox: no quadratic backtracking, no int() of a
    # 100,000-digit number, no recursion error escaping.
    [report] = read_reports(raw, KEYS)
    assert (report.kind, report.delivery_id) == (IGNORED, None)
    assert_well_formed(report)


def test_our_message_ids_are_read_back_only_when_signed() -> None:
    assert delivery_of_message_id(KEYS, MESSAGE_ID) == DELIVERY
    assert delivery_of_message_id(KEYS, f"  {MESSAGE_ID.upper()} ") == DELIVERY
    assert delivery_of_message_id(("test-key",), MESSAGE_ID.strip("<>")) == DELIVERY
    assert delivery_of_message_id(("other-key",), MESSAGE_ID) is None
    assert delivery_of_message_id(KEYS, MESSAGE_ID.replace(f".{DELIVERY}.", ".4712.")) is None
    assert delivery_of_message_id(KEYS, MESSAGE_ID.replace(f"<{EDITION}.", f"<0{EDITION}.")) is None
    assert delivery_of_message_id(KEYS, PLACEHOLDERS["{{FORGED_MESSAGE_ID}}"]) is None
    assert delivery_of_message_id(KEYS, "<CAF=abc@mail.gmail.com>") is None
    assert delivery_of_message_id(KEYS, f"<{'9' * 5000}.1.abc@x>") is None


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (550, "5.1.1 The email account that you tried to reach does not exist.", HARD),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", HARD),
        (550, "5.2.1 The email account that you tried to reach is disabled.", HARD),
        (553, "5.1.3 Bad recipient address syntax", HARD),
        (554, "delivery error: dd This user doesn't have a yahoo.com account", HARD),
        (550, "user unknown", HARD),
        # Vague codes with words of policy, and specific codes, are not the address's fault.
        (550, "5.5.0 Requested action not taken: mailbox unavailable (spam blocked)", IGNORED),
        (550, "5.7.1 Recipient address rejected: user unknown (sender blocked)", IGNORED),
        (552, "5.2.2 The email account that you tried to reach is over quota.", SOFT),
        (550, "5.7.26 Unauthenticated email is not accepted from this domain.", IGNORED),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.10] blocked using Spamhaus",
            IGNORED,
        ),
        (550, "5.1.8 Sender address rejected: Domain not found", IGNORED),
        # RFC 5321's stock 550 text, policy refusals included: counted, not suppressed at once.
        (550, "Requested action not taken: mailbox unavailable", SOFT),
        (550, "5.5.0 Requested action not taken: mailbox unavailable", SOFT),
        (554, "Transaction failed", SOFT),
        (550, "4.1.1 looks temporary but the reply code says permanent", SOFT),
        (452, "4.2.2 The email account that you tried to reach is over quota.", SOFT),
        (451, "4.3.0 Temporary server error", SOFT),
        (450, "4.1.1 Recipient address rejected: lookup failed", SOFT),
        # Throttling and greylisting: a matter of our sending rate, not the address.
        (421, "4.7.28 Gmail has detected an unusual rate of unsolicited mail", IGNORED),
        (421, "Service not available, closing transmission channel", IGNORED),
        (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", IGNORED),
        (451, "4.7.1 Greylisted, please try again in 300 seconds", IGNORED),
        (450, "Too many connections from your IP (rate limited)", IGNORED),
        (451, "Temporary local problem - please try later", IGNORED),
        # Not failures at all.
        (250, "2.0.0 OK", IGNORED),
        (354, "Start mail input", IGNORED),
        (0, "", IGNORED),
        (999, "5.1.1 nonsense", IGNORED),
    ],
)
def test_smtp_replies_classify_like_reports(code: int, message: str, kind: ReportKind) -> None:
    assert classify_smtp_reply(code, message) == kind


def assert_well_formed(report: Report) -> None:
    assert isinstance(report.kind, ReportKind)
    assert len(report.detail) <= DETAIL_LENGTH
    assert "\n" not in report.detail and "\r" not in report.detail
    assert report.recipient is None or report.recipient == report.recipient.lower()
    assert report.delivery_id in (None, DELIVERY)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    reports = read_reports(raw, KEYS)
    assert reports
    for report in reports:
        assert_well_formed(report)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(EXPECTED)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=8)), max_size=8),
    cut=st.floats(0, 1),
)
def test_mutated_fixtures_never_raise(name: str, edits, cut: float) -> None:
    raw = bytearray(fixture(name))
    for where, replacement in edits:  # overwrite, insert or delete a few bytes
        at = int(where * len(raw))
        raw[at : at + len(replacement) // 2] = replacement
    reports = read_reports(bytes(raw[: max(1, int(cut * len(raw) * 2))]), KEYS)
    assert reports
    for report in reports:
        assert_well_formed(report)
