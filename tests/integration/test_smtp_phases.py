"""Where an SMTP failure happens decides what it means for the delivery (digest.mail.SmtpSender),
against a real socket peer that fails at exactly the scripted point."""

from __future__ import annotations

import pytest

from digest.mail import (
    PermanentError,
    SmtpSender,
    TransientError,
    TransportUnavailable,
    UncertainOutcome,
)
from tests.support import ScriptedSmtp, free_port

MESSAGE = b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"


def send(sender: SmtpSender, begun: list[bool], allow: bool = True) -> bool:
    def begin() -> bool:
        begun.append(allow)
        return allow

    return sender.send("digest@news.example.com", "reader@example.org", MESSAGE, "k", begin)


@pytest.mark.parametrize(
    ("stage", "reply", "outcome", "began"),
    [
        # Nothing about this recipient, nothing handed over: the batch stops, nobody is charged.
        ("connect", "close", TransportUnavailable, False),
        ("connect", "554 5.3.2 no service", TransportUnavailable, False),
        ("MAIL", "553 5.7.1 sender not allowed", TransportUnavailable, False),
        ("MAIL", "451 4.3.0 try later", TransportUnavailable, False),
        ("RCPT", "421 4.3.2 shutting down", TransportUnavailable, False),
        ("DATA", "close", TransportUnavailable, True),
        # This recipient refused.
        ("RCPT", "550 5.1.1 no such user", PermanentError, False),
        ("RCPT", "452 4.2.2 mailbox full", TransientError, False),
        ("DATA", "554 5.3.4 message too big", PermanentError, True),
        ("dot", "554 5.7.1 rejected as spam", PermanentError, True),
        ("dot", "451 4.7.1 greylisted", TransientError, True),
        # The server had the whole message when the connection broke: nobody knows.
        ("dot", "close", UncertainOutcome, True),
    ],
)
def test_failure_is_classified_by_where_it_happens(stage, reply, outcome, began) -> None:
    peer = ScriptedSmtp({stage: reply})
    sender = SmtpSender.from_url(peer.url)
    begun: list[bool] = []
    try:
        with pytest.raises(outcome):
            send(sender, begun)
        assert bool(begun) == began
    finally:
        sender.close()
        peer.close()


@pytest.mark.parametrize(
    ("stage", "reply"),
    [("RCPT", "550 5.1.1 no such user"), ("dot", "554 5.7.1 rejected as spam")],
)
def test_connection_is_reset_and_reused_after_a_refusal(stage, reply) -> None:
    peer = ScriptedSmtp({stage: reply})
    sender = SmtpSender.from_url(peer.url)
    try:
        with pytest.raises(PermanentError):
            send(sender, [])
        peer.script.clear()
        assert send(sender, []) is True
        assert peer.commands.count("RSET") == 1
        assert peer.commands.count("EHLO") == 1  # one connection throughout
    finally:
        sender.close()
        peer.close()


def test_a_cancelled_delivery_sends_no_message() -> None:
    # DATA is already on its way when the delivery turns out to be cancelled: the connection
    # is closed before any of the message, and the next message opens a new one.
    peer = ScriptedSmtp({})
    sender = SmtpSender.from_url(peer.url)
    try:
        assert send(sender, [], allow=False) is False
        assert peer.messages == 0
        assert send(sender, []) is True
        assert peer.messages == 1
        assert peer.commands.count("EHLO") == 2
    finally:
        sender.close()
        peer.close()


def test_an_error_recording_the_entry_sends_no_message() -> None:
    # The database fails between DATA and its reply: nothing of the message goes out, and the
    # sender does not read the stale 354 as the next message's answer.
    peer = ScriptedSmtp({})
    sender = SmtpSender.from_url(peer.url)

    def failing_begin() -> bool:
        raise RuntimeError("database gone")

    try:
        with pytest.raises(RuntimeError):
            sender.send(
                "digest@news.example.com", "reader@example.org", MESSAGE, "k", failing_begin
            )
        assert send(sender, []) is True
        assert peer.messages == 1
        assert peer.connections == 2
    finally:
        sender.close()
        peer.close()


def test_a_session_opened_again_goes_to_the_relay_that_took_the_last() -> None:
    refusing = ScriptedSmtp({"connect": "554 5.3.2 no service"})
    working = ScriptedSmtp({})
    sender = SmtpSender.from_url(f"{refusing.url},{working.url}")
    try:
        assert send(sender, [], allow=False) is False  # the session is closed after DATA
        assert send(sender, []) is True
        assert (refusing.connections, working.connections, working.messages) == (1, 2, 1)
    finally:
        sender.close()
        refusing.close()
        working.close()


def test_message_is_dot_stuffed_and_accepted() -> None:
    peer = ScriptedSmtp({})
    sender = SmtpSender.from_url(peer.url)
    try:
        assert send(sender, []) is True
        assert peer.messages == 1
    finally:
        sender.close()
        peer.close()


def test_nothing_listening_is_unavailable() -> None:
    sender = SmtpSender.from_url(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(TransportUnavailable):
        send(sender, [])
