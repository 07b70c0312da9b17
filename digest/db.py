"""Engines, sessions and schema migrations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Dialect, Engine, Select, Update, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Compiled, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web process read while a worker writes; busy_timeout makes a second writer
    # wait for the lock instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@cache
def engine_for(url: str) -> Engine:
    """One engine per URL and process (engines own connection pools)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # A database that does not answer fails a request in seconds, not after the OS gives up.
        connect_args["connect_timeout"] = 10
    if make_url(url).get_driver_name() == "psycopg":
        # psycopg prepares a query it has run five times, and on every rollback deallocates
        # everything prepared in the session: commit_together's statements too, which are the
        # ones that matter (one per message sent).
        connect_args["prepare_threshold"] = None
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def upsert_insert(session: Session, table: type[Any]) -> Any:
    """INSERT for ``table`` with ON CONFLICT available, on PostgreSQL and SQLite alike."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# A Core statement and its parameters.
Statement = tuple[Update | Select[Any], Mapping[str, Any]]


def commit_together(session: Session, statements: Sequence[Statement]) -> list[int]:
    """Run Core ``statements``, each with its parameters, and commit them with whatever the
    session's transaction holds; returns each statement's row count. If anything fails, the
    session's transaction is rolled back and nothing of it is committed.

    Through psycopg this is one round trip to PostgreSQL instead of one per statement plus
    one for BEGIN and one for COMMIT: each statement is prepared once per connection (PREPARE:
    parsed once, and planned as a generic plan once PostgreSQL finds that as good) and run by
    EXECUTE with its parameters bound on the client, all of them in one query. Each still runs
    with a snapshot taken when it starts (READ COMMITTED), so one may wait for a lock that a
    later one relies on. A statement names its parameters (``bindparam``) and uses no expanding
    ones, which are bound as the statement runs: ``column.in_(values)`` with a list of plain
    values is one; ``column.in_([literal(v) for v in values])`` is not. Prepared statements
    live in the server's session: connect directly or through a pooler in session mode, not in
    transaction mode.
    """
    session.flush()
    connection = session.connection()
    if not statements or connection.dialect.driver != "psycopg":
        counts = [
            connection.execute(statement, params).rowcount for statement, params in statements
        ]
        session.commit()
        return counts
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    if raw.prepare_threshold is not None:
        raise RuntimeError(
            "commit_together needs psycopg's own preparing off (prepare_threshold=None), or a "
            "rollback deallocates its statements: use an engine from digest.db.engine_for"
        )
    prepared = [
        (_prepared(statement, connection.dialect), params) for statement, params in statements
    ]
    try:
        counts = _send_together(raw, connection, prepared)
    except BaseException:
        with suppress(SQLAlchemyError):
            session.rollback()  # the session must know its transaction is gone
        raise
    session.commit()  # nothing left to send: this only brings the session's state in line
    return counts


def _send_together(
    raw: psycopg.Connection[Any],
    connection: Connection,
    prepared: list[tuple[_Prepared, Mapping[str, Any]]],
) -> list[int]:
    """commit_together's query through psycopg: PREPAREs for what the connection lacks, the
    EXECUTEs and COMMIT; each statement's row count."""
    switched = False
    query = "(not built)"
    try:
        known = _prepared_on.pop(raw, None)  # until this query's outcome says what is prepared
        if known is None:
            known = {name for (name,) in raw.execute("SELECT name FROM pg_prepared_statements")}
        preparing = {p.name: p.definition for p, _ in prepared if p.name not in known}
        head = list(preparing.values())
        if raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # psycopg would send a BEGIN of its own first, in a round trip of its own: the
            # query carries it instead, unless the connection asks for particular transactions.
            if raw.autocommit:
                head.append("BEGIN")
            elif (raw.isolation_level, raw.read_only, raw.deferrable) == (None, None, None):
                raw.autocommit = switched = True
                head.append("BEGIN")
        with psycopg.ClientCursor(raw) as cursor:
            runs = [p.execute(cursor, params) for p, params in prepared]
            query = "; ".join([*head, *runs, "COMMIT"])
            cursor.execute(query)
            counts = [cursor.rowcount]
            while cursor.nextset():
                counts.append(cursor.rowcount)
    except psycopg.Error as exc:
        with suppress(psycopg.Error):
            raw.rollback()  # the transaction is lost: leave the connection usable, if it is
        raise DBAPIError.instance(query, None, exc, psycopg.Error) from exc
    finally:
        if switched:
            try:
                raw.autocommit = False
            except psycopg.Error:
                # Broken, or in a state that would autocommit whatever its next user runs.
                connection.invalidate()
    _prepared_on[raw] = known | set(preparing)
    return counts[len(head) : len(head) + len(runs)]


@dataclass(frozen=True)
class _Prepared:
    """A statement as commit_together prepares it on a connection and runs it there."""

    name: str
    definition: str  # PREPARE name AS …
    compiled: Compiled  # with $1, $2, … for the parameters
    # What SQLAlchemy does to each parameter before the driver sees it (the column types'
    # checks and conversions), in the order of $1, $2, …
    processors: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    def execute(self, cursor: psycopg.ClientCursor[Any], params: Mapping[str, Any]) -> str:
        values = self.compiled.construct_params(params)
        try:
            args = [
                values[key] if process is None else process(values[key])
                for key, process in self.processors
            ]
        except Exception as exc:  # as SQLAlchemy reports a value its column type refuses
            raise StatementError(str(exc), self.compiled.string, values, exc) from exc
        if not args:
            return f"EXECUTE {self.name}"
        return cursor.mogrify(f"EXECUTE {self.name}({', '.join(['%s'] * len(args))})", args)


@lru_cache(maxsize=64)
def _prepared(statement: Update | Select[Any], dialect: Dialect) -> _Prepared:
    compiled = statement.compile(dialect=type(dialect)(paramstyle="numeric_dollar"))
    if "POSTCOMPILE" in compiled.string:
        raise ValueError(
            f"an expanding parameter cannot be bound on the client (use IN with literal() values "
            f"instead): {compiled}"
        )
    processors = tuple(
        (key, compiled.binds[key].type.dialect_impl(dialect).bind_processor(dialect))
        for key in compiled.positiontup or ()
    )
    # Named for its text: a name means the same statement in every process.
    name = "digest_" + hashlib.sha256(compiled.string.encode()).hexdigest()[:20]
    return _Prepared(name, f"PREPARE {name} AS {compiled.string}", compiled, processors)


# The statements commit_together has prepared on each connection. A connection not asked yet
# has no entry; nor has one whose last query failed, which may have struck before or after one
# of its PREPAREs took effect (a prepared statement outlives a rolled back transaction).
_prepared_on: WeakKeyDictionary[psycopg.Connection[Any], set[str]] = WeakKeyDictionary()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in passwords would otherwise be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe to call on every start."""
    command.upgrade(alembic_config(url), revision)
