"""Hand-built MIME, header hygiene, and the file outbox."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from digest.mail import Outbox, clean_header, compose, open_sender
from tests.support import parse_message

DATE = datetime(2024, 12, 10, 9, 30, tzinfo=UTC)
TEXT = (
    "North Korea’s Dangerous New Role in Russia’s War\n"
    "한국어 뉴스: 북한\n"
    "A line long enough to need a soft break in quoted-printable, because it goes on "
    "past seventy-six characters = and has an equals sign.\n"
    ".A line starting with a dot, and one ending in spaces   \n"
    "\tindented\n"
)
HTML = (
    '<p><a href="https://news.example.com/c/WzEsMl0.abc?x=1&amp;y=2">North Korea’s war</a></p>\n'
    "<p>한국어</p>\n"
)
LIST_UNSUBSCRIBE = "<https://news.example.com/u/WzEyMzQ1LDEyXQ.Yl3bmS1g0Dw5Pz6K8nQe4r2Yv0c>"
BASE_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}


@pytest.fixture
def make() -> Callable[..., bytes]:
    """compose() with working defaults; a test overrides what it is about."""

    def make(**overrides: Any) -> bytes:
        args: dict[str, Any] = {
            "sender": "Newsroom Digest <digest@news.example.com>",
            "recipient": "reader@example.org",
            "subject": "Example News Daily",
            "text": TEXT,
            "html": HTML,
            "message_id": "<42.7@news.example.com>",
            "date": DATE,
        }
        return compose(**(args | overrides))

    return make


def _crlf_to_lf(value: str) -> str:
    # MIME text travels with CRLF line breaks (RFC 2046); the parser hands them back as such.
    return value.replace("\r\n", "\n")


def test_is_multipart_alternative_text_then_html(make):
    message = parse_message(make())

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]


def test_parts_decode_to_the_inputs(make):
    text_part, html_part = parse_message(make()).iter_parts()

    assert _crlf_to_lf(text_part.get_content()) == TEXT
    assert _crlf_to_lf(html_part.get_content()) == HTML


@pytest.mark.parametrize(
    "subject",
    [
        "Example News Daily",
        "Example News Daily: North Korea’s Dangerous New Role in Russia’s War: What You Need to "
        "Know",
        "한국어 뉴스: 북한의 새로운 역할",
    ],
)
def test_subject_decodes_back_exactly(make, subject):
    assert parse_message(make(subject=subject))["Subject"] == subject


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "subject": "Example News Daily: North Korea’s Dangerous New Role in Russia’s War: "
            "What You Need to Know 한국어"
        },
        {
            "subject": "Example News Daily: Democratic Party Leader Demands Second Impeachment "
            "After Martial Law Controversy"
        },
        {"headers": [("List-Unsubscribe", LIST_UNSUBSCRIBE)]},
    ],
    ids=["plain", "long-non-ascii-subject", "long-ascii-subject", "list-unsubscribe"],
)
def test_every_line_ends_in_crlf_and_fits_78_characters(make, overrides):
    raw = make(**overrides)

    assert raw.endswith(b"\r\n")
    lines = raw[:-2].split(b"\r\n")
    assert [line for line in lines if b"\r" in line or b"\n" in line] == []
    assert [line for line in lines if len(line) > 78] == []


INJECTED = "Bcc: victim@example.com"


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": f"Hi\r\n{INJECTED}"},
        {"subject": f"Hi\n{INJECTED}"},
        {"subject": f"Hi\r{INJECTED}\0"},
        {"subject": f"North Korea’s\r\n{INJECTED}"},
        {"sender": f"Newsroom\n{INJECTED} <digest@news.example.com>"},
        {"sender": f'"Newsroom\r\n{INJECTED}" <digest@news.example.com>'},
        {"recipient": f"reader@example.org\r\n{INJECTED}"},
        {"message_id": f"<42.7@news.example.com>\r\n{INJECTED}"},
        {"headers": [("List-Id", f"Daily <daily.news.example.com>\r\n{INJECTED}")]},
    ],
)
def test_header_injection_adds_no_header(make, overrides):
    raw = make(**overrides)
    message = parse_message(raw)
    extra = {name for name, _ in overrides.get("headers", [])}

    assert "Bcc" not in message
    assert set(message.keys()) == BASE_HEADERS | extra
    assert len(message.keys()) == len(BASE_HEADERS | extra)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^bcc:", head, re.IGNORECASE | re.MULTILINE)
    assert b"\0" not in raw


def test_extra_headers_are_included(make):
    headers = [
        ("List-Id", "Example News — Daily <daily.news.example.com>"),
        ("List-Unsubscribe", LIST_UNSUBSCRIBE),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]

    message = parse_message(make(headers=headers))

    # A value folded right after the colon unfolds with a leading space in Python's parser;
    # RFC 5322 unfolding gives the same header either way.
    assert [(name, str(message[name]).strip()) for name, _ in headers] == headers


def test_message_id_and_date(make):
    message = parse_message(make())

    assert message["Message-ID"] == "<42.7@news.example.com>"
    assert parsedate_to_datetime(message["Date"]) == DATE


def test_outbox_writes_one_file_per_key_atomically(tmp_path, make):
    outbox = tmp_path / "outbox"
    first, second = make(subject="First"), make(subject="Second")

    with open_sender(f"file://{outbox}") as sender:
        assert isinstance(sender, Outbox)
        assert sender.send("digest@news.example.com", "reader@example.org", first, "12-34", _go)
        assert (outbox / "12-34.eml").read_bytes() == first
        sender.send("digest@news.example.com", "reader@example.org", second, "12-34", _go)
        # A delivery cancelled at the last moment writes nothing.
        assert not sender.send("digest@news.example.com", "x@example.org", first, "99", _stop)

    # Dot-files included: the temporary files start with ".tmp-".
    assert [p.name for p in outbox.iterdir()] == ["12-34.eml"]
    assert (outbox / "12-34.eml").read_bytes() == second


def _go() -> bool:
    return True


def _stop() -> bool:
    return False


@pytest.mark.parametrize("url", ["ftp://x", "http://mail.example.com", "mailto:x@example.com"])
def test_unknown_transport_names_the_variable(url):
    with pytest.raises(ValueError, match="DIGEST_SMTP_URL"), open_sender(url):
        pass


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Hi\r\nBcc: x@example.com", "HiBcc: x@example.com"),
        ("a\rb\nc\0d", "abcd"),
        ("North Korea’s 한국어\ttab", "North Korea’s 한국어\ttab"),
    ],
)
def test_clean_header_strips_cr_lf_nul(value, expected):
    assert clean_header(value) == expected
