"""Log lines: JSON objects with the ids of the work in hand, or text with the ids appended."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator

import pytest

from digest.config import Settings, load_settings
from digest.logs import configure_logging, log_context


class Capture:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def capture(capsys: pytest.CaptureFixture[str]) -> Iterator[Capture]:
    """What our handler writes to stderr; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Capture(capsys)
    root.handlers[:] = handlers
    root.setLevel(level)


def _settings(env: dict[str, str], log_format: str) -> Settings:
    return dataclasses.replace(load_settings(env), log_format=log_format)


def test_json_lines_carry_the_context_ids(env, capture) -> None:
    configure_logging(_settings(env, "json"))
    log = logging.getLogger("digest.sending")
    with log_context(edition_id=7, task="digest.send_batch"):
        with log_context(delivery_id=42):
            log.warning("delivery %s failed: %s", 42, "550 no such mailbox")
        log.info("edition %s batch", 7)
    log.info("outside")

    first, second, third = (json.loads(line) for line in capture.getvalue().splitlines())
    assert first["message"] == "delivery 42 failed: 550 no such mailbox"
    assert (first["level"], first["logger"]) == ("warning", "digest.sending")
    assert (first["edition_id"], first["delivery_id"], first["task"]) == (
        7,
        42,
        "digest.send_batch",
    )
    assert "delivery_id" not in second and second["edition_id"] == 7
    assert "edition_id" not in third
    assert first["time"].endswith("+00:00")


def test_json_keeps_a_multiline_exception_on_one_line(env, capture) -> None:
    configure_logging(_settings(env, "json"))
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("x").exception("it broke")
    (line,) = capture.getvalue().splitlines()
    parsed = json.loads(line)
    assert "ValueError: bad\nthing" in parsed["exception"]


def test_text_lines_append_the_ids(env, capture) -> None:
    configure_logging(_settings(env, "text"))
    with log_context(edition_id=3):
        logging.getLogger("digest.sending").warning("slow relay")
    assert capture.getvalue().rstrip().endswith("WARNING digest.sending: slow relay [edition_id=3]")


def test_configuring_again_replaces_only_our_handler(env, capture) -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    configure_logging(_settings(env, "text"))
    configure_logging(_settings(env, "json"))
    logging.getLogger("x").warning("once")
    assert len(capture.getvalue().splitlines()) == 1
    assert other in logging.getLogger().handlers
