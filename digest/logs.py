"""Logging for every process: readable lines on a terminal, one JSON object per line in a
cluster (``DIGEST_LOG_FORMAT=json``), so a log pipeline can find every line about an edition,
a delivery or a task without parsing prose.

Ids travel in a context (``log_context``) rather than in each message: a task sets the edition
once and every line logged under it, including those of the libraries it calls, carries it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from digest.config import Settings

# The fields a line may carry beyond its message, in the order a reader wants them.
CONTEXT_FIELDS = ("task", "task_id", "edition_id", "delivery_id", "source_id")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)


LogContextToken = contextvars.Token[Mapping[str, Any]]


def push_log_context(**fields: Any) -> LogContextToken:
    """Add fields to every line logged from here until ``pop_log_context(token)``, for code
    whose start and end are separate calls (Celery's task_prerun and task_postrun)."""
    return _context.set({**_context.get(), **fields})


def pop_log_context(token: LogContextToken) -> None:
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (edition_id=…, delivery_id=…) to every line logged inside the block."""
    token = push_log_context(**fields)
    try:
        yield
    finally:
        pop_log_context(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n)]
        if not fields:
            return text
        head, newline, rest = text.partition("\n")
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


class _Handler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again replaces it and leaves others' handlers alone."""


def configure_logging(settings: Settings) -> None:
    """Our handler on the root logger, to stderr. Calling it again (each web worker process,
    the Celery worker) replaces it rather than adding a second."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Their INFO lines are one per HTTP request or connection, or per migration check that
    # every command makes: noise at the default level.
    for chatty in ("alembic", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
