"""Preview screenshots in a real headless Chromium: full page, mobile rules, no network.

Chromium (Debian's ``chromium``) is required in CI (CI=true): a missing one fails loudly.
Elsewhere the tests that need it are skipped with the reason. Pixels are read with a small
PNG decoder here, so the tests need nothing beyond the standard library.
"""

from __future__ import annotations

import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from digest.screenshots import (
    DESKTOP,
    MOBILE,
    ScreenshotError,
    Viewport,
    screenshot,
)
from tests.support import wait_until

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLUE, RED, GREEN = (0, 0, 255), (255, 0, 0), (0, 255, 0)

# A 600 px table, a 200 px header whose colour a mobile media query changes, and a 3000 px story
# block, so the page is far taller than either viewport. Every way out to the network points at
# the test's server (TRACKER): an open pixel, CSS, prefetch, preconnect, a frame, and a script
# that would also repaint the header if scripts ran; the photo on a remote host must not hang.
EMAIL = """<!doctype html>
<html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="TRACKER/style.css">
<link rel="prefetch" href="TRACKER/prefetch">
<link rel="preconnect" href="TRACKER">
<link rel="dns-prefetch" href="//tracker.example">
<style>
  @import url("TRACKER/import.css");
  body { margin: 0; background: #ffffff; font-family: sans-serif; }
  .hero { height: 200px; background: #0000ff; }
  .story { height: 3000px; background: #00ff00 url("TRACKER/background.png"); }
  @media (max-width: 600px) { .hero { background: #ff0000; } }
</style></head>
<body>
<table role="presentation" width="600" align="center" cellpadding="0" cellspacing="0"
  style="width: 600px; max-width: 100%">
<tr><td class="hero">Today's digest</td></tr>
<tr><td class="story"><img src="TRACKER/open.gif" width="1" height="1" alt="">
<img src="https://images.tracker.example/photo.jpg" alt="A photo"></td></tr>
</table>
<iframe src="TRACKER/frame" width="300" height="50"></iframe>
<script>
  document.querySelector(".hero").style.background = "#ff00ff";
  fetch("TRACKER/script");
</script>
</body></html>
"""
HERO_Y, STORY_BOTTOM = 100, 200 + 3000


@dataclass
class Tracker:
    """A local HTTP server standing in for image hosts and the open pixel."""

    url: str
    connections: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    paths: list[str] = []
    connections: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        # Counted at accept, so a bare preconnect with no request counts too.
        def verify_request(self, request: Any, client_address: Any) -> bool:
            connections.append(client_address)
            return True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Tracker(f"http://127.0.0.1:{server.server_address[1]}", connections, paths)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shots(chromium: str, tracker: Tracker) -> dict[str, bytes]:
    return screenshot(EMAIL.replace("TRACKER", tracker.url), [DESKTOP, MOBILE], browser=chromium)


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        start = x * self.channels
        red, green, blue = self.rows[y][start : start + 3]
        return red, green, blue


def decode_png(png: bytes) -> Image:
    """8-bit RGB or RGBA, non-interlaced: what Chromium writes."""
    assert png.startswith(PNG_SIGNATURE)
    position, compressed = len(PNG_SIGNATURE), []
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position : position + 8])
        data = png[position + 8 : position + 8 + length]
        position += length + 12
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data)
            assert (depth, colour, interlace) in {(8, 2, 0), (8, 6, 0)}
        elif kind == b"IDAT":
            compressed.append(data)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(compressed))
    stride = width * channels
    unchanged = bytes(stride)
    previous, rows = bytearray(stride), []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2 and line == unchanged:
            # The common case, a row like the one above; decoding it byte by byte takes seconds.
            line = bytearray(previous)
        else:
            _unfilter(kind, line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, previous: bytearray, channels: int) -> None:
    for i in range(len(line)):
        left = line[i - channels] if i >= channels else 0
        up = previous[i]
        up_left = previous[i - channels] if i >= channels else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            estimate = left + up - up_left
            near_left, near_up = abs(estimate - left), abs(estimate - up)
            near_up_left = abs(estimate - up_left)
            if near_left <= near_up and near_left <= near_up_left:
                line[i] = (line[i] + left) & 0xFF
            elif near_up <= near_up_left:
                line[i] = (line[i] + up) & 0xFF
            else:
                line[i] = (line[i] + up_left) & 0xFF


@pytest.mark.parametrize("viewport", [DESKTOP, MOBILE], ids=lambda v: v.name)
def test_capture_covers_the_whole_page_at_the_viewport_width(
    shots: dict[str, bytes], viewport: Viewport
) -> None:
    png = shots[viewport.name]
    assert png.startswith(PNG_SIGNATURE)
    image = decode_png(png)
    assert image.width == viewport.width * viewport.scale
    assert image.height >= STORY_BOTTOM * viewport.scale > viewport.height * viewport.scale
    # The bottom of the story is painted, not a blank beyond the first screen.
    middle = viewport.width // 2
    bottom = int((STORY_BOTTOM - 10) * viewport.scale)
    assert image.pixel(int(middle * viewport.scale), bottom) == GREEN


def test_mobile_rules_apply_only_on_mobile_and_scripts_do_not_run(
    shots: dict[str, bytes],
) -> None:
    desktop, mobile = decode_png(shots["desktop"]), decode_png(shots["mobile"])
    # Had the page's script run, the header would be magenta in both.
    assert desktop.pixel(DESKTOP.width // 2, HERO_Y) == BLUE
    scale = int(MOBILE.scale)
    assert mobile.pixel(MOBILE.width // 2 * scale, HERO_Y * scale) == RED


def test_no_request_leaves_the_browser(shots: dict[str, bytes], tracker: Tracker) -> None:
    assert set(shots) == {"desktop", "mobile"}
    assert tracker.paths == []
    assert tracker.connections == []


def test_browser_and_profile_are_gone_afterwards(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    screenshot("<p>Hello</p>", [DESKTOP], browser=chromium)
    assert list(tmp_path.iterdir()) == []
    wait_until(lambda: not _running_with(str(tmp_path)), 5, "Chromium's processes to end")


def test_timeout_kills_the_browser_and_its_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in that starts a helper, as Chromium does, and then never answers on the pipe.
    fake = _script(tmp_path / "bin", 'sleep 300 &\necho $! > "$HELPER_PID"\nwait')
    helper_pid = tmp_path / "helper.pid"
    monkeypatch.setenv("HELPER_PID", str(helper_pid))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(profiles))

    with pytest.raises(ScreenshotError, match=r"did not finish the screenshots within 1 s"):
        screenshot("<p>Hello</p>", [DESKTOP], browser=str(fake), timeout=1)

    assert list(profiles.iterdir()) == []
    pid = int(helper_pid.read_text())
    wait_until(lambda: not _alive(pid), 5, "the helper process to be killed")


def test_a_browser_that_exits_says_why(tmp_path: Path) -> None:
    fake = _script(tmp_path, 'echo "Missing X server or $DISPLAY" >&2\nexit 1')
    with pytest.raises(ScreenshotError, match=r"stopped before the screenshots: Missing X server"):
        screenshot("<p>Hello</p>", [DESKTOP], browser=str(fake))


def test_missing_browser_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ScreenshotError) as named:
        screenshot("<p>Hello</p>", [DESKTOP], browser=str(tmp_path / "chromium"))
    assert "no Chromium at" in str(named.value)
    assert "apt-get install chromium" in str(named.value)
    assert "DIGEST_CHROMIUM" in str(named.value)

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ScreenshotError) as looked_up:
        screenshot("<p>Hello</p>", [DESKTOP])
    assert "tried chromium, chromium-browser, google-chrome" in str(looked_up.value)
    assert "apt-get install chromium" in str(looked_up.value)


def test_viewport_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        screenshot("<p>Hello</p>", [DESKTOP, DESKTOP], browser="/nonexistent")


def _script(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fake-chromium"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _running_with(text: str) -> list[int]:
    """Live processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found
