"""The README's first Quick start command, as a new user runs it: `digest demo` on a fresh data
directory with nothing running, a real worker process, the file outbox."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.support import parse_message


def test_demo_sends_a_valid_digest_to_every_demo_subscriber(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["DIGEST_DATA_DIR"] = str(tmp_path / "var")
    digest = Path(sys.executable).parent / "digest"
    result = subprocess.run(
        [str(digest), "demo", "--subscribers", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Messages: 6 sent" in result.stdout
    assert "Then follow a tracked link:" in result.stdout

    outbox = sorted((tmp_path / "var" / "outbox").glob("*.eml"))
    assert len(outbox) == 6
    messages = [parse_message(path.read_bytes()) for path in outbox]
    assert len({m["Message-ID"] for m in messages}) == 6
    for message in messages:
        assert message["Date"] is not None
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]

    # A second run finds today's edition sent and says so instead of sending it again
    # (unless the UTC day changed in between: then it is a new day's edition).
    day = datetime.now(UTC).date()
    again = subprocess.run(
        [str(digest), "demo", "--subscribers", "6"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    if datetime.now(UTC).date() == day:
        assert "sent already" in again.stdout
        assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 6
