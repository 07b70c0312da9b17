"""Reading incoming mail from a Maildir: order, marking done, failures, limits, concurrency."""

from __future__ import annotations

import mailbox
import os
import threading
import time
from pathlib import Path

import pytest

from digest.mailboxes import MailboxError, process_mailbox
from tests.support import free_port


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    mailbox.Maildir(root, create=True)
    return root


def deliver(root: Path, n: int, *, cur: bool = False) -> bytes:
    """Message ``n``, delivered at second ``n`` (new/ as a delivery agent leaves it, or cur/
    as a mail client files it after a look)."""
    body = f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode()
    name = f"{1_700_000_000 + n}.M{n}P1.test" + (":2,S" if cur else "")
    path = root / ("cur" if cur else "new") / name
    path.write_bytes(body)
    os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))
    return body


def waiting(root: Path) -> list[str]:
    return sorted(os.listdir(root / "new") + os.listdir(root / "cur"))


def processed(root: Path) -> list[bytes]:
    folder = mailbox.Maildir(root, create=False).get_folder("Processed")
    return sorted(folder.get_bytes(key) for key in folder.iterkeys())


def test_new_and_cur_are_handled_in_arrival_order_and_moved_to_processed(maildir) -> None:
    # Names alone would sort 10 before 9: the order is the delivery time.
    bodies = [deliver(maildir, 10), deliver(maildir, 9, cur=True), deliver(maildir, 11)]
    (maildir / "tmp" / "being-delivered").write_bytes(b"half a message")
    seen: list[bytes] = []

    assert process_mailbox(f"maildir://{maildir}", seen.append) == 3

    assert seen == [bodies[1], bodies[0], bodies[2]]
    assert waiting(maildir) == []
    assert processed(maildir) == sorted(bodies)
    assert all(":2," in name for name in os.listdir(maildir / ".Processed" / "cur"))
    assert os.listdir(maildir / "tmp") == ["being-delivered"]  # never touched


def test_a_second_run_handles_nothing(maildir) -> None:
    deliver(maildir, 1)
    assert process_mailbox(str(maildir), lambda raw: None) == 1
    seen: list[bytes] = []
    assert process_mailbox(str(maildir), seen.append) == 0
    assert seen == []


def test_a_failing_message_stays_and_the_others_are_handled(maildir, caplog) -> None:
    bodies = [deliver(maildir, n) for n in (1, 2, 3)]
    seen: list[bytes] = []

    def handle(raw: bytes) -> None:
        if raw == bodies[1]:
            raise ValueError("cannot parse this bounce")
        seen.append(raw)

    assert process_mailbox(str(maildir), handle) == 2

    assert seen == [bodies[0], bodies[2]]
    assert waiting(maildir) == [f"{1_700_000_002}.M2P1.test"]
    assert "cannot parse this bounce" in caplog.text
    # Fixed handler, next run: only the message left behind.
    seen.clear()
    assert process_mailbox(str(maildir), seen.append) == 1
    assert seen == [bodies[1]]


def test_limit_caps_the_messages_handled_oldest_first(maildir) -> None:
    bodies = [deliver(maildir, n) for n in range(1, 6)]
    seen: list[bytes] = []
    assert process_mailbox(str(maildir), seen.append, limit=2) == 2
    assert seen == bodies[:2]
    assert len(waiting(maildir)) == 3
    assert process_mailbox(str(maildir), seen.append, limit=0) == 0
    assert process_mailbox(str(maildir), seen.append) == 3
    assert seen == bodies


def test_a_message_that_always_fails_does_not_use_up_the_limit(maildir) -> None:
    bodies = [deliver(maildir, n) for n in (1, 2)]

    def handle(raw: bytes) -> None:
        if raw == bodies[0]:
            raise ValueError("poison")

    assert process_mailbox(str(maildir), handle, limit=1) == 1
    assert waiting(maildir) == [f"{1_700_000_001}.M1P1.test"]


def test_concurrent_runs_never_hand_a_message_to_both(maildir) -> None:
    total, runners = 120, 4
    for n in range(total):
        deliver(maildir, n)
    seen: list[list[bytes]] = [[] for _ in range(runners)]
    counts = [0] * runners
    start = threading.Barrier(runners)

    def run(i: int) -> None:
        def handle(raw: bytes) -> None:
            seen[i].append(raw)
            time.sleep(0.001)  # widen the window between reading and moving

        start.wait()
        counts[i] = process_mailbox(str(maildir), handle)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    everything = [raw for handled in seen for raw in handled]
    assert len(everything) == len(set(everything)) == total
    assert sum(counts) == total
    assert sum(1 for handled in seen if handled) > 1, "the runs did not overlap"
    assert waiting(maildir) == []
    assert len(processed(maildir)) == total


def test_a_missing_maildir_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MailboxError, match=f"no Maildir at {missing}"):
        process_mailbox(f"maildir://{missing}", lambda raw: None)
    (tmp_path / "plain").mkdir()
    with pytest.raises(MailboxError, match="not a Maildir"):
        process_mailbox(str(tmp_path / "plain"), lambda raw: None)


@pytest.mark.parametrize(
    "url", ["pop3://u:secret@host/", "maildir://relative/path", "Maildir", "https://x/"]
)
def test_an_unsupported_url_names_the_supported_forms(url) -> None:
    with pytest.raises(MailboxError, match="maildir:///path/to/Maildir") as error:
        process_mailbox(url, lambda raw: None)
    assert "secret" not in str(error.value)


def test_an_imap_server_that_is_not_there_is_a_clear_error() -> None:
    url = f"imaps://bounces:s3cret@127.0.0.1:{free_port()}/INBOX"
    with pytest.raises(MailboxError, match="cannot connect to the IMAP server") as error:
        process_mailbox(url, lambda raw: None)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize("url", ["imap://127.0.0.1/INBOX", "imaps://u:pw@host:port/"])
def test_an_incomplete_imap_url_is_a_clear_error(url) -> None:
    with pytest.raises(MailboxError, match=r"user and a host|port is not a number"):
        process_mailbox(url, lambda raw: None)
