"""Readiness: can this process do its work now? The database and the broker both answer.

Liveness is not asked here: a process that runs is alive, and restarting it because the
database is away would not bring the database back. The web app serves readiness at /readyz;
`digest health` asks the same for the worker and beat containers.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from digest.broker import queue_depth
from digest.config import Settings

log = logging.getLogger(__name__)

OK = "ok"
UNAVAILABLE = "unavailable"


def readiness(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, str]:
    """{dependency: "ok" | "unavailable"}. Why one is unavailable goes to the log, not into the
    answer: readiness is served without a token, and errors can name hosts and users."""
    checks = {}
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = OK
    except Exception as exc:
        log.warning("readiness: the database did not answer: %s", exc)
        checks["database"] = UNAVAILABLE
    try:
        queue_depth(settings)
        checks["broker"] = OK
    except Exception as exc:
        log.warning("readiness: the broker did not answer: %s", exc)
        checks["broker"] = UNAVAILABLE
    return checks
