"""Incoming mail: bounces, complaint reports and mailto: unsubscribe requests, read from a mailbox
named by a URL and handed one raw message at a time to a callback that records what it says.

    maildir:///var/mail/bounces             (or just /var/mail/bounces)
    imaps://user:password@host:993/FOLDER   (the folder defaults to INBOX)
    imap://user:password@host:143/FOLDER    STARTTLS required; ?starttls=off for a local test server

A message is marked done only after the callback returns: a crash in between hands it over again
on the next run instead of losing it, which is safe because the callbacks are idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import imaplib
import logging
import mailbox
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from digest.config import redact_url

IMAP_TIMEOUT = 30  # seconds, for the connection and for each reply
# Handled Maildir messages go to this Maildir++ sub-folder rather than being deleted: an operator
# can still read the bounce that unsubscribed someone, or the report a parser got wrong, and it
# shows up as the folder "Processed" to an IMAP server on the same Maildir. Pruning is a cron job.
PROCESSED_FOLDER = ".Processed"

log = logging.getLogger(__name__)


class MailboxError(Exception):
    """The mailbox cannot be opened or read; the message says what to fix (URL, credentials,
    path)."""


def process_mailbox(url: str, handle: Callable[[bytes], None], *, limit: int | None = None) -> int:
    """Hand every waiting message to ``handle`` in arrival order, then mark it done; returns how
    many were handled. A message whose handle raises is left in place (logged with the exception)
    and the rest continue."""
    # ``limit`` counts messages handled, not tried: a message that fails every time must not use
    # up a small limit run after run and stall everything that arrived after it.
    parts = urlsplit(url)
    if url.startswith("/"):
        return _process_maildir(Path(url), handle, limit)
    if parts.scheme == "maildir" and not parts.netloc and parts.path.startswith("/"):
        return _process_maildir(Path(unquote(parts.path)), handle, limit)
    if parts.scheme in ("imap", "imaps"):
        return _process_imap(url, handle, limit)
    raise MailboxError(
        f"unsupported mailbox URL {redact_url(url)!r}: use maildir:///path/to/Maildir (three "
        "slashes, or just the absolute path), imaps://user:password@host/FOLDER, or "
        "imap://user:password@host/FOLDER (STARTTLS)"
    )


def _process_maildir(root: Path, handle: Callable[[bytes], None], limit: int | None) -> int:
    try:
        box = mailbox.Maildir(root, factory=None, create=False)
    except mailbox.NoSuchMailboxError:
        raise MailboxError(f"no Maildir at {root}: check the path in the mailbox URL") from None
    if not all((root / sub).is_dir() for sub in ("new", "cur", "tmp")):
        raise MailboxError(f"{root} is not a Maildir: it has no new/, cur/ and tmp/ directories")
    done, handled = root / PROCESSED_FOLDER, 0
    try:
        # makedirs(exist_ok) rather than Maildir.add_folder, whose check-then-mkdir fails when
        # two processes create the folder at once.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(done / sub, exist_ok=True)
        (done / "maildirfolder").touch()
        for path in _waiting(root):
            if limit is not None and handled >= limit:
                break
            # Names in cur/ carry an info suffix (":2,FLAGS"); one from new/ gets an empty one.
            name = path.name if box.colon in path.name else f"{path.name}{box.colon}2,"
            handled += _take(path, done / "cur" / name, handle)
    except OSError as exc:  # not the handler's: _take catches those
        raise MailboxError(f"cannot use the Maildir at {root}: {exc}") from exc
    return handled


def _waiting(root: Path) -> list[Path]:
    """The messages in new/ and cur/, in delivery order: the delivery agent sets each file's
    mtime, and the unique name breaks ties (names are not ordered by themselves)."""
    found = []
    for sub in ("new", "cur"):
        for entry in os.scandir(root / sub):
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process took it meanwhile
                found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
    return [path for _, _, path in sorted(found)]


def _take(path: Path, target: Path, handle: Callable[[bytes], None]) -> bool:
    """Handle one Maildir message and move it to ``target``; False if it was not handled here.

    A process claims a message with an exclusive flock held until the message has been moved, so
    two processes never hand the same message over, and a crash releases the claim by itself.
    flock, not lockf: lockf's locks belong to the process, so two threads would share one.
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return False  # another process moved it after the listing
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process is handling it right now
        # Between our open and our lock another process may have handled it, moved it and let go:
        # only a file still waiting at its path is ours.
        try:
            if not os.path.samestat(os.stat(path), os.fstat(file.fileno())):
                return False
        except FileNotFoundError:
            return False
        try:
            handle(file.read())
        except Exception:
            log.exception("mailbox message %s left in place: the handler failed", path)
            return False
        try:
            os.rename(path, target)
        except FileNotFoundError:
            # Moved by something that does not lock (a mail client filing it); if it comes back
            # the handler sees it twice, which it tolerates.
            log.warning("mailbox message %s was moved by someone else while handled", path)
        return True


def _process_imap(url: str, handle: Callable[[bytes], None], limit: int | None) -> int:
    parts, shown = urlsplit(url), redact_url(url)
    options = {key: values[-1].lower() for key, values in parse_qs(parts.query).items()}
    implicit_tls = parts.scheme == "imaps"
    try:
        host, port = parts.hostname, parts.port or (993 if implicit_tls else 143)
    except ValueError:
        raise MailboxError(f"{shown}: the port is not a number") from None
    if not host or not parts.username:
        raise MailboxError(f"{shown}: an IMAP URL needs a user and a host: imaps://user:pw@host/")
    user, password = unquote(parts.username), unquote(parts.password or "")
    try:
        if implicit_tls:
            context = ssl.create_default_context()
            imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=IMAP_TIMEOUT)
        else:
            imap = imaplib.IMAP4(host, port, timeout=IMAP_TIMEOUT)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"cannot connect to the IMAP server of {shown}: {exc}") from exc
    try:
        if not implicit_tls and options.get("starttls") not in ("off", "no", "false", "0"):
            try:
                imap.starttls(ssl.create_default_context())
            except imaplib.IMAP4.error as exc:
                raise MailboxError(
                    f"{host}:{port} refused STARTTLS ({_text(exc)}): use imaps://, or "
                    "?starttls=off for a local test server only"
                ) from exc
        try:
            imap.login(user, password)
        except (imaplib.IMAP4.error, UnicodeEncodeError) as exc:
            why = "IMAP LOGIN takes ASCII only" if isinstance(exc, UnicodeEncodeError) else exc
            raise MailboxError(f"IMAP login failed for {user}@{host}: {_text(why)}") from None
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        quoted = '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
        _ok(imap.select(quoted), f"cannot open the folder {folder!r} of {shown}")
        return _drain_imap(imap, shown, handle, limit)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"IMAP mailbox {shown}: {_text(exc)}") from exc
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            imap.logout()


def _drain_imap(
    imap: imaplib.IMAP4, shown: str, handle: Callable[[bytes], None], limit: int | None
) -> int:
    # UNDELETED, not UNSEEN: an operator reading the mailbox in a mail client marks messages
    # seen, and that must not hide them from us. BODY.PEEK leaves \Seen alone for the same reason.
    # Done means \Deleted and one EXPUNGE at the end rather than MOVE to a folder: every server
    # has it (MOVE is an extension), and it creates nothing on an account that may not be ours.
    # A crash before the EXPUNGE is harmless: flagged messages are no longer UNDELETED.
    # IMAP has no way to claim a message, so two runs on one folder may both handle one; the
    # handler's idempotence covers that (unlike Maildir, nothing here prevents it).
    data = _ok(imap.uid("SEARCH", "UNDELETED"), f"cannot search {shown}")
    uids = sorted(int(uid) for uid in (data[0] or b"").split())  # UIDs grow in arrival order
    handled = 0
    for uid in uids:
        if limit is not None and handled >= limit:
            break
        fetched = _ok(imap.uid("FETCH", str(uid), "(BODY.PEEK[])"), f"cannot read {shown}")
        raw = next((item[1] for item in fetched if isinstance(item, tuple)), None)
        if raw is None:
            continue  # expunged by another client since the search
        try:
            handle(raw)
        except Exception:
            log.exception("%s: message UID %s left in place: the handler failed", shown, uid)
            continue
        # Failing here stops the run: otherwise every message would be handled again each run.
        store = imap.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        _ok(store, f"cannot mark messages done in {shown}")
        handled += 1
    if handled:
        _ok(imap.expunge(), f"cannot expunge handled messages from {shown}")
    return handled


def _ok(response: tuple[str, list], what: str) -> list:
    typ, data = response
    if typ != "OK":
        raise MailboxError(f"{what}: {_text(data)}")
    return data


def _text(value: object) -> str:
    """The server's words from an imaplib exception or response data, as text."""
    if isinstance(value, BaseException) and value.args:
        value = value.args[0]
    if isinstance(value, list):
        value = value[0] if value else ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
