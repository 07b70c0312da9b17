"""Subscribers in and out as CSV: the import an editor runs to bring a list over from another
provider, and the export for spreadsheets and backups.

Invariants:
- Streaming both ways, so memory stays flat at any size (bench/RESULTS.md): the import reads,
  checks and stores ``chunk`` rows at a time and commits each chunk; the export reads through a
  server-side cursor. Nothing ever holds every row or every address.
- A chunk is committed whole or not at all. An import that stops half way keeps the chunks it
  committed, and running the same file again finishes the job: rows already present are counted
  as ``already_subscribed``, never as errors and never twice.
- An import never brings back someone who left: a suppressed address (known by its hash), a
  subscriber unsubscribed, suppressed or erased, and anyone who unsubscribed from any of our
  newsletters all stay as they are. So does a row that the file itself marks as not
  subscribed (our own export's ``status``, ``active`` and ``unsubscribed_at`` columns), so
  that exporting from one installation and importing into another cannot re-subscribe anyone.
- Every subscription an import creates appends one "imported" ConsentEvent in its chunk's
  transaction.
- A bad row is reported by its line number and reason and skipped; the rows around it go in.
  Only a file that is not a list of subscribers at all (no ``email`` column) raises CsvError,
  and it does so before anything is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any, TextIO

from sqlalchemy import Select, and_, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from digest.db import upsert_insert
from digest.models import (
    ConsentEvent,
    Frequency,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    Suppression,
    utcnow,
)
from digest.subscriptions import (
    InvalidAddress,
    PreferenceError,
    address_hash,
    check_timezone,
    normalise_email,
)

# No real cell is longer: an address is at most 254 characters, a name 200.
MAX_FIELD_CHARS = 1000
# A line longer than this cannot be a real row (a handful of fields of at most 1,000 characters,
# quoted); it is a binary file or a missing line break, and reading it whole could take all the
# memory. It is skipped and reported.
MAX_LINE_CHARS = 64 * 1024
# A bad file could report every one of its rows; the report keeps this many and a total.
MAX_REPORTED_ROWS = 1000
# Reasons quote the rejected value first and explain last; a reason longer than this keeps its
# beginning and its end.
MAX_REASON_CHARS = 300
NAME_MAX_CHARS = 200  # Subscriber.name's column

COLUMNS = ("email", "name", "timezone", "sections", "frequency")
EXPORT_COLUMNS = (
    "email",
    "name",
    "status",
    "timezone",
    "newsletter",
    "active",
    "frequency",
    "sections",
    "confirmed_at",
    "unsubscribed_at",
    "created_at",
)
# Spreadsheets run a cell starting with one of these as a formula (CSV injection): the export
# writes such a cell behind an apostrophe, and the import takes the apostrophe off again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Excel writes semicolon-separated files where the decimal separator is a comma; some tools
# write tabs. The header says which one a file uses.
_DELIMITERS = (",", ";", "\t")
_LEFT = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.SUPPRESSED, SubscriberStatus.ERASED)
_FALSE = ("false", "0", "no", "n", "f")


class CsvError(ValueError):
    """The file cannot be imported at all; nothing was written."""


@dataclass(frozen=True)
class RowError:
    """A row that was not imported: its physical line in the file (the header is line 1; a
    quoted cell spanning lines is reported at the line where its row starts), and why."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did. Every data row is in exactly one count; blank rows are in none.

    ``errors`` counts rows rejected as invalid. ``first_errors`` lists, in file order, the first
    MAX_REPORTED_ROWS rows reported one by one: the invalid ones and the suppressed ones (reason
    "suppressed"), so ``unlisted`` says how many reports did not fit.
    """

    imported: int = 0
    already_subscribed: int = 0
    duplicates: int = 0
    suppressed: int = 0
    unsubscribed: int = 0
    errors: int = 0
    first_errors: list[RowError] = field(default_factory=list)

    @property
    def unlisted(self) -> int:
        return self.errors + self.suppressed - len(self.first_errors)

    @property
    def valid(self) -> int:
        """Rows that named someone we could decide about, whatever was decided."""
        return (
            self.imported
            + self.already_subscribed
            + self.duplicates
            + self.suppressed
            + self.unsubscribed
        )

    def _report(self, line: int, reason: str) -> None:
        if len(self.first_errors) < MAX_REPORTED_ROWS:
            if len(reason) > MAX_REASON_CHARS:
                half = MAX_REASON_CHARS // 2
                reason = reason[: half - 1] + "…" + reason[-half:]
            self.first_errors.append(RowError(line, reason))

    def _reject(self, line: int, reason: str) -> None:
        self.errors += 1
        self._report(line, reason)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    name: str
    timezone: str
    sections: list[str] | None
    frequency: Frequency


class _Lines:
    """The source's physical lines, each at most MAX_LINE_CHARS long. A longer line is read
    in pieces, dropped, and remembered by its number; csv sees an empty line in its place, so
    the line numbers csv counts stay those of the file."""

    def __init__(self, source: Iterable[str] | TextIO) -> None:
        readline = getattr(source, "readline", None)
        # readline(limit) never reads more than the limit, whatever the file holds; iterating
        # over a file reads a whole line first.
        self._readline: Callable[[int], str] | None = readline
        self._iter = None if readline is not None else iter(source)
        self.overlong: list[int] = []
        self._number = 0

    def _piece(self) -> str:
        if self._readline is not None:
            return self._readline(MAX_LINE_CHARS + 1)
        assert self._iter is not None
        return next(self._iter, "")

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._piece()
        if not line:
            raise StopIteration
        self._number += 1
        if len(line.rstrip("\r\n")) <= MAX_LINE_CHARS:
            return line
        if self._readline is not None:
            while line and not line.endswith(("\n", "\r")):
                line = self._piece()
        self.overlong.append(self._number)
        return "\n"


def _unescape(value: str) -> str:
    """A cell as entered: without the apostrophe the export puts before a formula start."""
    if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS):
        return value[1:]
    return value


@dataclass(frozen=True)
class _Header:
    delimiter: str
    width: int
    positions: dict[str, int]


def _read_header(first: str) -> _Header:
    if not first.strip():
        raise CsvError("line 1 is empty: the first line must be the header, with an email column")
    if "\ufffd" in first or "\0" in first:
        raise CsvError("the file is not UTF-8 text: save it as “CSV UTF-8” and try again")
    found: list[str] = []
    for delimiter in _DELIMITERS:
        try:
            cells = next(csv.reader([first], delimiter=delimiter))
        except csv.Error as exc:
            raise CsvError(f"the header (line 1) is not valid CSV: {exc}") from None
        names = [cell.strip().lower() for cell in cells]
        if "email" not in names:
            found = found or names
            continue
        positions: dict[str, int] = {}
        for index, name in enumerate(names):
            if name in positions:
                raise CsvError(f"the header (line 1) has the column {name!r} twice")
            if name:
                positions[name] = index
        return _Header(delimiter, len(names), positions)
    shown = ", ".join(repr(name) for name in found[:20])
    raise CsvError(
        f"the header (line 1) has no email column (found: {shown}); the first line must name "
        f"the columns, among them email and optionally {', '.join(COLUMNS[1:])}"
    )


def _check_row(
    values: list[str], line: int, header: _Header, sections: dict[str, str]
) -> _Row | None:
    """The row's values checked, or None when the file says the person is not subscribed.
    Raises _Rejected with the reason for a row that cannot be imported."""
    if len(values) != header.width:
        few_or_many = "few" if len(values) < header.width else "many"
        raise _Rejected(
            f"too {few_or_many} fields: the header has {header.width}, this row {len(values)}"
        )
    for value in values:
        if len(value) > MAX_FIELD_CHARS:
            raise _Rejected(f"a field is longer than {MAX_FIELD_CHARS:,} characters")
        if "\ufffd" in value:  # what errors="replace" makes of bytes that are not UTF-8
            raise _Rejected("not UTF-8 text: save the file as “CSV UTF-8”")
        if "\0" in value:
            raise _Rejected("a field contains a NUL character")

    def cell(name: str) -> str:
        index = header.positions.get(name)
        return "" if index is None else _unescape(values[index].strip())

    if (
        cell("status").lower() not in ("", SubscriberStatus.ACTIVE.value)
        or cell("active").lower() in _FALSE
        or cell("unsubscribed_at")
    ):
        return None
    try:
        email = normalise_email(cell("email"))
    except InvalidAddress as exc:
        raise _Rejected(str(exc)) from None
    # Line breaks and tabs in a name would end up in a To: header; runs of white space are
    # one space.
    name = " ".join(cell("name").split())
    if len(name) > NAME_MAX_CHARS:
        raise _Rejected(f"the name is longer than {NAME_MAX_CHARS} characters")
    try:
        timezone = check_timezone(cell("timezone")) if cell("timezone") else "UTC"
    except PreferenceError as exc:
        raise _Rejected(str(exc)) from None
    chosen = list(dict.fromkeys(s.strip() for s in cell("sections").split(";") if s.strip()))
    if chosen and not sections:
        raise _Rejected("this newsletter offers no sections to choose from")
    unknown = [s for s in chosen if s.lower() not in sections]
    if unknown:
        raise _Rejected(
            f"no such section: {', '.join(unknown)} (the newsletter has: "
            f"{', '.join(sections.values())})"
        )
    frequency = cell("frequency").lower() or Frequency.DAILY.value
    if frequency not in (f.value for f in Frequency):
        raise _Rejected(f"the frequency is daily or weekly, not {cell('frequency')!r}")
    return _Row(
        line=line,
        email=email,
        name=name,
        timezone=timezone,
        # Matched without regard to case, stored as the newsletter spells them.
        sections=[sections[s.lower()] for s in chosen] or None,
        frequency=Frequency(frequency),
    )


def _store(
    session: Session, newsletter: Newsletter, rows: list[_Row], source: str, report: ImportReport
) -> None:
    """Store one chunk's checked rows, distinct addresses, with a fixed number of statements.

    Inserts go through the Core (session.connection()), many rows per statement; ON CONFLICT
    DO NOTHING lets a sign-up that lands between our look-up and our insert win, and such a
    row is counted as already there.
    """
    hashes = {row.email: address_hash(row.email) for row in rows}
    suppressed = set(
        session.scalars(
            select(Suppression.address_hash).where(
                Suppression.address_hash.in_(list(hashes.values()))
            )
        )
    )
    unsubscribed = aliased(Subscription)
    known = {
        found.email: found
        for found in session.execute(
            select(
                Subscriber.id,
                Subscriber.email,
                Subscriber.status,
                Subscription.id.label("subscription_id"),
                # Unsubscribed from any of our newsletters: an import (someone else's list)
                # is no new consent to be mailed by us, so it does not count for this one.
                exists()
                .where(
                    unsubscribed.subscriber_id == Subscriber.id,
                    unsubscribed.unsubscribed_at.is_not(None),
                )
                .label("left_any"),
            )
            .outerjoin(
                Subscription,
                and_(
                    Subscription.subscriber_id == Subscriber.id,
                    Subscription.newsletter_id == newsletter.id,
                ),
            )
            .where(Subscriber.email.in_(list(hashes)))
        )
    }
    newcomers: list[_Row] = []
    joining: dict[int, _Row] = {}
    for row in rows:
        found = known.get(row.email)
        if hashes[row.email] in suppressed:
            report.suppressed += 1
            report._report(row.line, "suppressed")
        elif found is None:
            newcomers.append(row)
        elif found.status in _LEFT or found.left_any:
            report.unsubscribed += 1
        elif found.subscription_id is not None:
            # Subscribed, or a sign-up waiting for its confirmation link: left as it is.
            report.already_subscribed += 1
        else:
            joining[found.id] = row

    connection = session.connection()
    now = utcnow()
    if newcomers:
        created = connection.execute(
            upsert_insert(session, Subscriber)
            .on_conflict_do_nothing(index_elements=["email"])
            .returning(Subscriber.id, Subscriber.email),
            [
                {
                    "email": row.email,
                    "name": row.name,
                    "timezone": row.timezone,
                    "status": SubscriberStatus.ACTIVE,
                    "created_at": now,
                }
                for row in newcomers
            ],
        )
        ids = {email: subscriber_id for subscriber_id, email in created}
        report.already_subscribed += len(newcomers) - len(ids)
        joining.update((ids[row.email], row) for row in newcomers if row.email in ids)
    if not joining:
        return
    subscribed = set(
        connection.execute(
            upsert_insert(session, Subscription)
            .on_conflict_do_nothing(index_elements=["newsletter_id", "subscriber_id"])
            .returning(Subscription.subscriber_id),
            [
                {
                    "newsletter_id": newsletter.id,
                    "subscriber_id": subscriber_id,
                    "active": True,
                    "confirmed_at": now,
                    "sections": row.sections,
                    "frequency": row.frequency,
                    "created_at": now,
                }
                for subscriber_id, row in joining.items()
            ],
        ).scalars()
    )
    report.already_subscribed += len(joining) - len(subscribed)
    report.imported += len(subscribed)
    if not subscribed:
        return
    connection.execute(
        insert(ConsentEvent),
        [
            {
                "address_hash": hashes[joining[subscriber_id].email],
                "newsletter_id": newsletter.id,
                "action": "imported",
                "source": source,
                "created_at": now,
            }
            for subscriber_id in subscribed
        ],
    )
    # Someone with a pending sign-up to another newsletter now has a confirmed subscription:
    # the subscriber becomes active, or the new subscription would never receive anything.
    pending = [
        subscriber_id
        for subscriber_id in subscribed
        if (found := known.get(joining[subscriber_id].email)) is not None
        and found.status == SubscriberStatus.PENDING
    ]
    if pending:
        connection.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(pending), Subscriber.status == SubscriberStatus.PENDING)
            .values(status=SubscriberStatus.ACTIVE)
        )


def import_subscribers(
    session: Session,
    newsletter: Newsletter,
    lines: Iterable[str] | TextIO,
    *,
    source: str = "import",
    chunk: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Subscribe the addresses of a CSV file (with a header row) to ``newsletter``, confirmed.

    Columns: ``email`` (required), ``name``, ``timezone``, ``sections`` (separated by
    semicolons), ``frequency`` (daily or weekly); header names in any case, other columns
    ignored, a UTF-8 byte order mark tolerated. Open files with ``newline=""`` (the csv
    module's rule; it keeps line breaks inside quoted cells) and, for UTF-8 that may be bad,
    ``errors="replace"``: a row with undecodable bytes is then reported, not fatal.

    Raises CsvError, before writing anything, when the header has no email column. Commits
    after every ``chunk`` rows and calls ``progress`` with the number of rows the chunk held.
    See the module's docstring for the rules.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    report = ImportReport()
    physical = _Lines(lines)
    first = next(physical, None)
    if first is None:
        raise CsvError("the file is empty: the first line must be a header with an email column")
    if physical.overlong:
        raise CsvError(f"the header (line 1) is longer than {MAX_LINE_CHARS:,} characters")
    # A text editor's or Excel's byte order mark, when the file was not decoded as utf-8-sig.
    first = first.removeprefix("\ufeff")
    header = _read_header(first)
    sections = {s.lower(): s for s in newsletter.sections}
    reader = csv.reader(chain([first], physical), delimiter=header.delimiter)
    next(reader)  # the header, read above

    checked: list[_Row] = []
    seen: set[str] = set()  # this chunk's addresses; a later chunk's repeat is found in the DB
    taken = 0
    while True:
        line = reader.line_num + 1
        try:
            values: list[str] | None = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader starts afresh at the next line; one broken row costs one row.
            values = None
            report._reject(line, f"not valid CSV: {exc}")
            taken += 1
        for number in physical.overlong:
            report._reject(number, f"the line is longer than {MAX_LINE_CHARS:,} characters")
            taken += 1
        physical.overlong.clear()
        if values is not None and any(v.strip() for v in values):
            taken += 1
            try:
                row = _check_row(values, line, header, sections)
            except _Rejected as exc:
                report._reject(line, exc.reason)
            else:
                if row is None:
                    report.unsubscribed += 1
                elif row.email in seen:
                    report.duplicates += 1
                else:
                    seen.add(row.email)
                    checked.append(row)
        if taken >= chunk:
            _commit_chunk(session, newsletter, checked, source, report, taken, progress)
            checked, seen, taken = [], set(), 0
    if taken:
        _commit_chunk(session, newsletter, checked, source, report, taken, progress)
    return report


def _commit_chunk(
    session: Session,
    newsletter: Newsletter,
    rows: list[_Row],
    source: str,
    report: ImportReport,
    taken: int,
    progress: Callable[[int], None] | None,
) -> None:
    if rows:
        _store(session, newsletter, rows, source, report)
        session.commit()
    if progress is not None:
        progress(taken)


def _export_query(newsletter: Newsletter | None) -> Select[Any]:
    query = select(
        Subscriber.email,
        Subscriber.name,
        Subscriber.status,
        Subscriber.timezone,
        Newsletter.slug,
        Subscription.active,
        Subscription.frequency,
        Subscription.sections,
        Subscription.confirmed_at,
        Subscription.unsubscribed_at,
        Subscriber.created_at,
    ).where(Subscriber.status != SubscriberStatus.ERASED)
    if newsletter is None:
        # Everyone, with a row per subscription; someone with none still gets one row.
        query = query.outerjoin(Subscription, Subscription.subscriber_id == Subscriber.id)
        query = query.outerjoin(Newsletter, Newsletter.id == Subscription.newsletter_id)
    else:
        query = query.join(Subscription, Subscription.subscriber_id == Subscriber.id)
        query = query.join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        query = query.where(Subscription.newsletter_id == newsletter.id)
    return query.order_by(Subscriber.id, Subscription.id)


def export_row_count(session: Session, newsletter: Newsletter | None) -> int:
    """How many rows export_subscribers will write (for a progress bar)."""
    query = select(func.count()).select_from(_export_query(newsletter).subquery())
    return session.scalar(query) or 0


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    text = ";".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def export_chunks(
    session: Session,
    newsletter: Newsletter | None,
    *,
    progress: Callable[[int], None] | None = None,
    chunk_chars: int = 64 * 1024,
) -> Iterator[str]:
    """The export as pieces of CSV text of about ``chunk_chars``, header first; for a streamed
    HTTP response. ``progress`` is called with the number of rows in each batch written.

    One statement read through a server-side cursor (yield_per): one consistent snapshot of
    the table, in batches of 1,000 rows, whatever its size. The transaction stays open while
    the reader consumes the pieces.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    result = session.execute(_export_query(newsletter).execution_options(yield_per=1000))
    for batch in result.partitions():
        writer.writerows([_cell(value) for value in row] for row in batch)
        if progress is not None:
            progress(len(batch))
        if buffer.tell() >= chunk_chars:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def export_subscribers(
    session: Session,
    newsletter: Newsletter | None,
    out: TextIO,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the subscribers of ``newsletter`` (of every newsletter: None) to ``out`` as CSV,
    one row per subscription, erased subscribers left out; returns the number of rows.

    Columns: EXPORT_COLUMNS. A cell that a spreadsheet would run as a formula is written behind
    an apostrophe; import_subscribers reads it back as it was. Open ``out`` with
    ``newline=""``: rows end with CRLF (RFC 4180).
    """
    written = 0

    def counted(rows: int) -> None:
        nonlocal written
        written += rows
        if progress is not None:
            progress(rows)

    for text in export_chunks(session, newsletter, progress=counted):
        out.write(text)
    return written
