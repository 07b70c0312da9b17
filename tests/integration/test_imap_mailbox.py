"""Reading incoming mail over IMAP, against a real Dovecot started for each test.

Dovecot runs in the foreground with its own configuration, sockets, state and log in temporary
directories, listening on 127.0.0.1 and a free port, so a system Dovecot (if any) is irrelevant.
Without TLS: the tests use ``?starttls=off``, the switch meant for such local servers.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from digest.mailboxes import MailboxError, process_mailbox
from tests.support import free_port, wait_until

USER = "bounces"
PASSWORD = "p@ss w/rd%"  # characters that must be percent-encoded in the URL


@dataclass
class Dovecot:
    port: int

    def url(self, password: str = PASSWORD, folder: str = "INBOX") -> str:
        secret = quote(password, safe="")
        return f"imap://{USER}:{secret}@127.0.0.1:{self.port}/{quote(folder)}?starttls=off"

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def deliver(self, *bodies: bytes, folder: str = "INBOX") -> None:
        imap, quoted = self.client(), f'"{folder}"'  # imaplib quotes no mailbox names
        try:
            if folder != "INBOX":
                assert imap.create(quoted)[0] == "OK"
            for body in bodies:
                assert imap.append(quoted, None, None, body)[0] == "OK"
        finally:
            imap.logout()

    def messages(self, folder: str = "INBOX") -> list[tuple[bytes, bytes]]:
        """(body, flags) of every message left in the folder, expunged ones excluded."""
        imap = self.client()
        try:
            assert imap.select(f'"{folder}"')[0] == "OK"
            found = []
            for uid in imap.uid("SEARCH", "ALL")[1][0].split():
                data = imap.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")[1]
                head, body = next(item for item in data if isinstance(item, tuple))
                found.append((body, head))
            return found
        finally:
            imap.logout()


def _dovecot_binary() -> str:
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if found is None:
        reason = "dovecot is not installed: apt-get install dovecot-imapd (Debian, Ubuntu)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI requires it (.ci/run installs it)")
        pytest.skip(reason)
    return found


def _config(root: Path, port: int, *, as_root: bool) -> str:
    if as_root:
        # Dovecot drops root to its own users (dovecot, dovenull) and chroots the login process.
        own = ""
    else:
        # Unprivileged, every Dovecot process runs as us, and nothing can chroot.
        me = pwd.getpwuid(os.getuid()).pw_name
        own = (
            f"default_internal_user = {me}\ndefault_login_user = {me}\n"
            f"default_internal_group = {grp.getgrgid(os.getgid()).gr_name}\n"
            "service anvil {\n  chroot =\n}\nservice imap-login {\n  chroot =\n}\n"
        )
    return f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
# Real servers slow down password guessing; the wrong-password test need not wait.
auth_failure_delay = 0
mail_location = maildir:~/Maildir
first_valid_uid = 1
{own}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            return conn.recv(100).startswith(b"* OK")
    except OSError:
        return False


@pytest.fixture
def dovecot(tmp_path, start_service) -> Iterator[Dovecot]:
    binary = _dovecot_binary()
    # Outside pytest's tmp_path: run as root, Dovecot reads its users file and the mail home as
    # its own users (dovecot, nobody), who cannot enter pytest's root-only directories.
    root = Path(tempfile.mkdtemp(prefix="digest-dovecot-"))
    root.chmod(0o755)
    as_root = os.geteuid() == 0
    # Mail is never accessed as root (Dovecot refuses UID 0): the mailbox belongs to nobody.
    account = pwd.getpwnam("nobody") if as_root else pwd.getpwuid(os.getuid())
    home = root / "home"
    home.mkdir()
    os.chown(home, account.pw_uid, account.pw_gid)
    port = free_port()
    users = f"{USER}:{{PLAIN}}{PASSWORD}:{account.pw_uid}:{account.pw_gid}::{home}\n"
    (root / "users").write_text(users)
    (root / "dovecot.conf").write_text(_config(root, port, as_root=as_root))
    service = start_service([binary, "-F", "-c", str(root / "dovecot.conf")], {})
    log = root / "dovecot.log"

    def ready() -> bool:
        assert service.proc.poll() is None, service.output() + (
            log.read_text() if log.exists() else ""
        )
        return _answers(port)

    try:
        wait_until(ready, 15, "Dovecot to accept IMAP connections")
        yield Dovecot(port)
    finally:
        service.stop()  # before removing the directories it writes to
        if log.exists():
            shutil.copy(log, tmp_path / "dovecot.log")  # kept with the test's other files
        shutil.rmtree(root, ignore_errors=True)


def message(n: int) -> bytes:
    return f"From: mailer-daemon@example.org\r\nSubject: bounce {n}\r\n\r\nbody {n}\r\n".encode()


def test_messages_are_handled_in_arrival_order_and_deleted(dovecot) -> None:
    bodies = [message(n) for n in (1, 2, 3)]
    dovecot.deliver(*bodies)
    seen: list[bytes] = []

    assert process_mailbox(dovecot.url(), seen.append) == 3

    assert seen == bodies
    assert dovecot.messages() == []  # expunged, not just flagged


def test_a_second_run_handles_nothing(dovecot) -> None:
    dovecot.deliver(message(1))
    assert process_mailbox(dovecot.url(), lambda raw: None) == 1
    seen: list[bytes] = []
    assert process_mailbox(dovecot.url(), seen.append) == 0
    assert seen == []


def test_a_failing_message_stays_unseen_and_the_others_are_handled(dovecot, caplog) -> None:
    bodies = [message(n) for n in (1, 2, 3)]
    dovecot.deliver(*bodies)
    seen: list[bytes] = []

    def handle(raw: bytes) -> None:
        if raw == bodies[1]:
            raise ValueError("cannot parse this bounce")
        seen.append(raw)

    assert process_mailbox(dovecot.url(), handle) == 2

    assert seen == [bodies[0], bodies[2]]
    [(left, flags)] = dovecot.messages()
    assert left == bodies[1]
    assert b"\\Seen" not in flags and b"\\Deleted" not in flags  # read with BODY.PEEK
    assert "cannot parse this bounce" in caplog.text
    assert PASSWORD not in caplog.text and quote(PASSWORD, safe="") not in caplog.text
    assert process_mailbox(dovecot.url(), seen.append) == 1
    assert seen[-1] == bodies[1]


def test_a_named_folder_and_a_limit(dovecot) -> None:
    bodies = [message(n) for n in range(1, 5)]
    dovecot.deliver(*bodies, folder="Bounce reports")
    seen: list[bytes] = []
    url = dovecot.url(folder="Bounce reports")
    assert process_mailbox(url, seen.append, limit=3) == 3
    assert seen == bodies[:3]
    assert [body for body, _ in dovecot.messages("Bounce reports")] == bodies[3:]


@pytest.mark.parametrize("password", ["wrong-secret", "wröng-secret"])
def test_a_wrong_password_is_a_login_error_that_does_not_show_it(dovecot, password) -> None:
    with pytest.raises(MailboxError, match=f"IMAP login failed for {USER}@127.0.0.1") as error:
        process_mailbox(dovecot.url(password=password), lambda raw: None)
    assert "secret" not in str(error.value)


def test_a_missing_folder_or_starttls_are_clear_errors(dovecot) -> None:
    with pytest.raises(MailboxError, match="cannot open the folder 'Nowhere'"):
        process_mailbox(dovecot.url(folder="Nowhere"), lambda raw: None)
    # This Dovecot has no TLS: without ?starttls=off the password is never sent in clear.
    plain = dovecot.url().removesuffix("?starttls=off")
    with pytest.raises(MailboxError, match="STARTTLS"):
        process_mailbox(plain, lambda raw: None)
