"""digest.db.commit_together: several statements and a commit, in one round trip on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from digest.db import commit_together, session_factory
from digest.models import UTCDateTime
from tests.support import wait_until

ROWS = Table(
    "commit_together_rows",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("state", String(20), nullable=False),
    Column("at", UTCDateTime()),
)
SET_STATE = (
    update(ROWS)
    .where(ROWS.c.id == bindparam("row"), ROWS.c.state.in_([literal("new"), literal("old")]))
    .values(state=bindparam("state"))
)
# A plain list of values is an expanding IN: bound when the statement runs.
SET_STATE_IN_LIST = update(ROWS).where(ROWS.c.state.in_(["new", "old"])).values(state="x")
INSERT = insert(ROWS).values(id=bindparam("id"), state=bindparam("state"))
LOCK = select(func.pg_advisory_xact_lock(bindparam("space"), bindparam("key")))


@pytest.fixture
def rows(any_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    ROWS.create(any_sessions.kw["bind"])
    with any_sessions() as session:
        session.execute(insert(ROWS), [{"id": n, "state": "new"} for n in (1, 2, 3)])
        session.commit()
    return any_sessions


def _states(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        return dict(session.execute(select(ROWS.c.id, ROWS.c.state)).all())


def test_statements_are_committed_with_what_the_session_holds(rows) -> None:
    with rows() as session:
        session.execute(insert(ROWS).values(id=4, state="new"))  # pending, uncommitted
        counts = commit_together(
            session,
            [
                (SET_STATE, {"row": 1, "state": "sent"}),
                (SET_STATE, {"row": 4, "state": "sent"}),
                (SET_STATE, {"row": 99, "state": "sent"}),
            ],
        )
        assert counts == [1, 1, 0]
        # Outside a transaction too (nothing pending): the same, and the session goes on.
        assert commit_together(session, [(SET_STATE, {"row": 2, "state": "old"})]) == [1]
        assert commit_together(session, []) == []
        assert session.scalar(select(func.count()).select_from(ROWS)) == 4
    assert _states(rows) == {1: "sent", 2: "old", 3: "new", 4: "sent"}


def test_values_go_through_their_column_types(rows) -> None:
    set_at = update(ROWS).where(ROWS.c.id == 1).values(at=bindparam("at", type_=ROWS.c.at.type))
    paris = datetime(2026, 11, 25, 7, 0, tzinfo=timezone(timedelta(hours=1)))
    with rows() as session:
        with pytest.raises(StatementError, match="naive datetime"):
            commit_together(session, [(set_at, {"at": datetime(2026, 11, 25, 7, 0)})])
        assert commit_together(session, [(set_at, {"at": paris})]) == [1]
        assert session.scalar(select(ROWS.c.at).where(ROWS.c.id == 1)) == datetime(
            2026, 11, 25, 6, 0, tzinfo=UTC
        )


def test_a_failing_statement_commits_none_of_them(rows) -> None:
    with rows() as session:
        with pytest.raises(IntegrityError):
            commit_together(
                session,
                [
                    (SET_STATE, {"row": 1, "state": "sent"}),
                    (INSERT, {"id": 2, "state": "new"}),  # the key is taken
                ],
            )
        session.rollback()
        # The session is usable, and transactions are transactions again.
        assert commit_together(session, [(SET_STATE, {"row": 3, "state": "sent"})]) == [1]
        session.execute(update(ROWS).where(ROWS.c.id == 2).values(state="old"))
        session.rollback()
    assert _states(rows) == {1: "new", 2: "new", 3: "sent"}


@pytest.fixture
def pg_rows(postgres_url: str) -> sessionmaker[Session]:
    sessions = session_factory(postgres_url)
    ROWS.create(sessions.kw["bind"])
    with sessions() as session:
        session.execute(insert(ROWS), [{"id": n, "state": "new"} for n in (1, 2, 3)])
        session.commit()
    return sessions


def _frontend_messages(trace: Path) -> list[str]:
    """The message types the client sent, from libpq's trace."""
    return [line.split("\t")[2] for line in trace.read_text().splitlines() if line[0] == "F"]


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in-transaction"])
def test_one_round_trip_on_postgresql(pg_rows, tmp_path: Path, in_transaction: bool) -> None:
    trace = tmp_path / "libpq.trace"
    statements = [
        (LOCK, {"space": 1, "key": 7}),
        (SET_STATE, {"row": 1, "state": "sent"}),
        (SET_STATE, {"row": 2, "state": "sent"}),
    ]
    with pg_rows() as session, trace.open("w") as out:
        # The first time on a connection asks which statements it has prepared already.
        assert commit_together(session, statements) == [1, 1, 1]
        if in_transaction:
            session.execute(select(ROWS.c.id).where(ROWS.c.id == 1))
        raw = session.connection().connection.driver_connection
        raw.pgconn.trace(out.fileno())
        raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        counts = commit_together(session, statements)
        raw.pgconn.untrace()
        assert counts == [1, 0, 0]  # the lock's row; both rows were sent already
        assert raw.autocommit is False
    # One query, no BEGIN, Sync or COMMIT of psycopg's own.
    assert _frontend_messages(trace) == ["Query"]
    assert _states(pg_rows) == {1: "sent", 2: "sent", 3: "new"}


def test_a_statement_after_a_lock_sees_what_committed_while_it_waited(pg_rows) -> None:
    # The sending engine's guarded entry into the SMTP window relies on this: its UPDATE
    # must see the other newsletter's message that held the reader's lock.
    holder = pg_rows()
    holder.execute(LOCK, {"space": 1, "key": 42})
    holder.execute(update(ROWS).where(ROWS.c.id == 3).values(state="sending"))
    follow = (
        update(ROWS)
        .where(ROWS.c.id == 1)
        .where(select(ROWS.c.id).where(ROWS.c.state == "sending").exists())
        .values(state="saw it")
    )
    counts: list[int] = []

    def waiter() -> None:
        with pg_rows() as session:
            counts.extend(commit_together(session, [(LOCK, {"space": 1, "key": 42}), (follow, {})]))

    thread = threading.Thread(target=waiter)
    thread.start()
    with pg_rows() as observer:
        waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        wait_until(
            lambda: observer.scalar(waiting) == 1,
            10,
            "the second transaction to wait for the lock",
        )
    holder.commit()
    holder.close()
    thread.join(10)
    assert counts == [1, 1]
    assert _states(pg_rows)[1] == "saw it"


def test_an_expanding_parameter_is_refused_on_postgresql(pg_rows) -> None:
    with pg_rows() as session, pytest.raises(ValueError, match="expanding parameter"):
        commit_together(session, [(SET_STATE_IN_LIST, {})])


def test_statements_prepared_by_a_failed_query_are_used_again(pg_rows) -> None:
    # The failed query's PREPAREs took effect before the error (a prepared statement outlives
    # the rolled back transaction): the next query must not prepare them a second time.
    with pg_rows.kw["bind"].connect() as connection, Session(bind=connection) as session:
        duplicate = (INSERT, {"id": 2, "state": "new"})
        with pytest.raises(IntegrityError):
            commit_together(session, [(SET_STATE, {"row": 1, "state": "sent"}), duplicate])
        session.rollback()
        assert commit_together(session, [(SET_STATE, {"row": 1, "state": "sent"})]) == [1]
    assert _states(pg_rows)[1] == "sent"


def test_prepared_statements_survive_the_sessions_rollbacks(pg_rows) -> None:
    # psycopg, preparing on its own, would deallocate everything prepared in the session on
    # a rollback: the engine turns that off (digest.db.engine_for).
    with pg_rows.kw["bind"].connect() as connection, Session(bind=connection) as session:
        assert commit_together(session, [(SET_STATE, {"row": 1, "state": "old"})]) == [1]
        for _ in range(6):
            session.execute(select(ROWS.c.state).where(ROWS.c.id == 2)).all()
        session.rollback()
        assert commit_together(session, [(SET_STATE, {"row": 1, "state": "sent"})]) == [1]
    assert _states(pg_rows)[1] == "sent"
