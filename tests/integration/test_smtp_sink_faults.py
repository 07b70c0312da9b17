"""The SMTP fault matrix against Postfix's own smtp-sink (``man smtp-sink``).

Each case starts the sink with fault flags, sends one batch of a real edition through
digest.sending.send_batch, and checks what the database says (states, attempts, bounces,
suppression, the auto-pause) against what the sink read and took (its dump files). Then the
relay recovers: a clean sink takes the rest, as the task's retry and the deferred rows' backoff
would, and the whole edition is checked for exactly once: no reader's message taken twice, no
row ``sent`` that no sink took, and nothing taken that the database does not count as ``sent``
or ``unknown`` (DESIGN, Testing).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from digest import mail, sending
from digest.config import load_settings
from digest.db import session_factory
from digest.mail import TransportUnavailable
from digest.models import (
    Bounce,
    BounceKind,
    Delivery,
    DeliveryState,
    Edition,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from tests.support import PostfixSink, deliveries_by_email, prepare_sample_edition, send_until_done

# One batch just big enough for the auto-pause to judge it: a batch in which every message
# misses pauses the edition.
READERS = sending.AUTO_PAUSE_MIN_ATTEMPTS


@dataclass(frozen=True)
class Fault:
    flags: tuple[str, ...]
    # Every delivery's state after the batch; None when the relay takes nothing: the batch
    # raises TransportUnavailable and every row is back in the queue, uncharged.
    state: DeliveryState | None
    # In every row's last_error, or in the TransportUnavailable raised.
    error: str
    # How many readers' messages the sink read through the final dot (and dumped), the first
    # ones in the order the batch takes them.
    read: int = 0
    # The bounce each refusal counts as; a hard one suppresses the reader.
    bounce: BounceKind | None = None
    readers: int = READERS
    # How many readers the batch tried before it stopped itself (None: all of them); the rest
    # are back in the queue, untouched.
    tried: int | None = None
    # digest.mail.SMTP_TIMEOUT for this case (a module constant, not a setting).
    timeout: float | None = None


SENT, DEFERRED, FAILED, UNKNOWN = (
    DeliveryState.SENT,
    DeliveryState.DEFERRED,
    DeliveryState.FAILED,
    DeliveryState.UNKNOWN,
)
NO_SESSION = "cannot open an SMTP session"
LOST = "connection to 127.0.0.1 lost"

FAULTS = {
    "clean": Fault((), SENT, "", read=READERS),
    # smtplib falls back to HELO: a relay without ESMTP is no fault.
    "ehlo-5xx-helo-fallback": Fault(("-f", "EHLO"), SENT, "", read=READERS),
    "rcpt-4xx": Fault(("-r", "RCPT"), DEFERRED, "RCPT TO: 450 4.3.0"),
    # smtp-sink's default hard reply is 5.3.0, a status about our sending rather than the
    # address (digest.bounce_reports): failed, but no bounce, nobody suppressed.
    "rcpt-5xx": Fault(("-f", "RCPT"), FAILED, "RCPT TO: 500 5.3.0"),
    "rcpt-5xx-user-unknown": Fault(
        ("-f", "RCPT", "-B", "550 5.1.1 Error: user unknown"),
        FAILED,
        "RCPT TO: 550 5.1.1",
        bounce=BounceKind.HARD,
    ),
    "data-4xx": Fault(("-r", "DATA"), DEFERRED, "DATA: 450 4.3.0"),
    "data-5xx": Fault(("-f", "DATA"), FAILED, "DATA: 500 5.3.0"),
    # Refused after the final dot: the sink read (and dumped) every message but took none.
    "dot-4xx": Fault(("-r", "."), DEFERRED, "end of DATA: 450 4.3.0", read=READERS),
    "dot-5xx": Fault(("-f", "."), FAILED, "end of DATA: 500 5.3.0", read=READERS),
    # Hung up instead of answering the final dot (RFC 1047): each message may have gone out.
    # The batch reconnects for the next reader; after sending.UNKNOWN_IN_A_ROW such readers it
    # stops and pauses the edition.
    "dot-dropped": Fault(
        ("-q", "."), UNKNOWN, "connection lost after the final dot", read=3, tried=3
    ),
    # The answer to the final dot comes after the client's timeout: the same window, and the
    # same stop (at 30 s a message, the share of a batch would never get there). The real
    # timeout is 30 s; a short one keeps the case fast.
    "dot-slower-than-timeout": Fault(
        ("-W", ".:2"), UNKNOWN, "timed out", read=3, readers=4, tried=3, timeout=0.5
    ),
    # The relay takes nothing: the batch stops at its first reader.
    "connect-5xx": Fault(("-f", "CONNECT"), None, NO_SESSION),
    "ehlo-dropped": Fault(("-q", "EHLO"), None, NO_SESSION),
    "mail-5xx": Fault(("-f", "MAIL"), None, "MAIL FROM: 500 5.3.0"),
    "mail-4xx": Fault(("-r", "MAIL"), None, "MAIL FROM: 450 4.3.0"),
    "rcpt-421": Fault(("-Q", "RCPT"), None, "RCPT TO: 421"),
    "rcpt-dropped": Fault(("-q", "RCPT"), None, LOST),
    # Cut off before the message went out: certainly not delivered, so queued again.
    "data-dropped": Fault(("-q", "DATA"), None, LOST),
    # 421 to the final dot: the relay read the first message and did not take it (only a 250
    # does), so that row goes back to the queue from ``sending``, and is sent once later.
    "dot-421": Fault(("-Q", "."), None, "end of DATA: 421", read=1),
}


def _assert_exactly_once(rows: dict[str, Delivery], *sinks: PostfixSink) -> None:
    received = sum((sink.received() for sink in sinks), Counter())
    accepted = sum((sink.accepted() for sink in sinks), Counter())
    # Taken, or hung up on after the final dot: either may have reached the reader. (A message
    # refused at its final dot and then retried is read twice, and that is fine.)
    delivered = sum((sink.received() for sink in sinks if sink.final_dot != "refused"), Counter())
    assert set(received) <= set(rows), received
    assert max(delivered.values(), default=0) <= 1, f"delivered twice: {delivered}"
    sent = {email for email, row in rows.items() if row.state == SENT}
    maybe = {email for email, row in rows.items() if row.state == UNKNOWN}
    assert sent <= set(accepted), f"sent, but no sink took it: {sent - set(accepted)}"
    assert set(delivered) <= sent | maybe, "perhaps delivered, but counted as neither"


def _recover(sessions: sessionmaker[Session], edition_id: int) -> None:
    """Someone looked and resumed the edition, and the deferred rows' retries came due."""
    with sessions() as session:
        # As `digest editions resume` does (it refuses an edition whose rows are all final,
        # where there is nothing left to send anyway).
        session.execute(
            update(Edition)
            .where(Edition.id == edition_id)
            .values(paused_at=None, pause_reason=None)
        )
        session.execute(
            update(Delivery)
            .where(Delivery.state == DEFERRED)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        sending.reconcile(session, utcnow())


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_each_fault_is_recorded_and_nothing_goes_out_twice(
    fault: Fault,
    env: dict[str, str],
    postfix_sink: Callable[[Sequence[str]], PostfixSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fault.timeout is not None:
        monkeypatch.setattr(mail, "SMTP_TIMEOUT", fault.timeout)
    sink = postfix_sink(fault.flags)
    env.update(DIGEST_SMTP_URL=sink.url, DIGEST_BATCH_SIZE=str(fault.readers))
    settings = load_settings(env)
    sessions = session_factory(settings.database_url)
    edition_id = prepare_sample_edition(settings, fault.readers).id
    rows = deliveries_by_email(sessions, edition_id)
    readers = sorted(rows, key=lambda email: rows[email].id)  # the order a batch takes them
    assert len(readers) == fault.readers
    read = Counter(dict.fromkeys(readers[: fault.read], 1))
    tried = fault.readers if fault.tried is None else fault.tried

    # The batch, against the faulty relay.
    if fault.state is None:
        with pytest.raises(TransportUnavailable, match=re.escape(fault.error)):
            sending.send_batch(sessions, settings, edition_id)
    else:
        outcomes = sending.send_batch(sessions, settings, edition_id)
        assert outcomes == Counter({fault.state: tried})

    rows = deliveries_by_email(sessions, edition_id)
    with sessions() as session:
        counts = sending.delivery_counts(session, edition_id)
        edition = session.get_one(Edition, edition_id)
        statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
        bounces = Counter(session.scalars(select(Bounce.kind)).all())
    expected = dict.fromkeys(DeliveryState, 0)
    expected[DeliveryState.QUEUED] = fault.readers - tried
    expected[fault.state or DeliveryState.QUEUED] += tried
    assert counts == expected
    for email, row in rows.items():
        assert row.lease_until is None  # nothing left held by this worker
        if fault.state is None or email not in readers[:tried]:
            # Stopped without charging anyone: no attempt counted, claimable at once.
            assert (row.state, row.attempts, row.last_error) == (DeliveryState.QUEUED, 0, None)
            continue
        assert row.attempts == 1
        if fault.state == SENT:
            assert row.sent_at is not None and row.last_error is None
        else:
            assert fault.error in row.last_error
        if fault.state == DEFERRED:
            assert row.next_attempt_at > utcnow()

    # What the sink read, and what it took (a dump is read, not necessarily taken).
    assert sink.received() == read
    _assert_exactly_once(rows, sink)

    # A hard bounce suppresses the reader at once; anything else suppresses nobody.
    assert bounces == Counter({fault.bounce: fault.readers} if fault.bounce else {})
    suppressed = fault.bounce == BounceKind.HARD
    assert set(statuses.values()) == {
        SubscriberStatus.SUPPRESSED if suppressed else SubscriberStatus.ACTIVE
    }

    # A whole batch that did not go out pauses the edition, if it was big enough to judge, and
    # so do a few messages in a row left unknown; a relay that took nothing is the task's retry
    # to handle, not a pause.
    missed = fault.state not in (None, SENT)
    streak = fault.state == UNKNOWN
    paused = streak or (missed and fault.readers >= sending.AUTO_PAUSE_MIN_ATTEMPTS)
    assert (edition.paused_at is not None) == paused
    if paused:
        reason = "the relay left 3 messages in a row" if streak else "too many errors"
        assert edition.pause_reason.startswith(reason)

    # The next batch finds nothing to claim (and sends nothing): unknown and failed rows are
    # final, deferred ones wait for their retry, and a paused edition is not claimed at all.
    if fault.state is not None:
        assert sending.send_batch(sessions, settings, edition_id) == Counter()
        assert sink.received() == read

    # The relay recovers: the rest of the edition goes out, and only the rest.
    clean = postfix_sink(())
    env["DIGEST_SMTP_URL"] = clean.url
    _recover(sessions, edition_id)
    send_until_done(load_settings(env), edition_id)
    retried = {
        email for email, row in rows.items() if row.state in (DEFERRED, DeliveryState.QUEUED)
    }
    assert clean.received() == Counter(dict.fromkeys(retried, 1))
    after = deliveries_by_email(sessions, edition_id)
    for email, row in after.items():
        if email in retried:
            assert row.state == SENT
            assert row.attempts == rows[email].attempts + 1
        else:
            assert row.state == rows[email].state  # unknown and failed are never resent
    _assert_exactly_once(after, sink, clean)
