"""Full-page PNG screenshots of an email's HTML in headless Chromium, for editors' previews.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-terminated
JSON on file descriptors 3 and 4): no port that another local process could connect to, and
nothing beyond the standard library. ``--screenshot`` on the command line cannot do the job: it
captures only the window, so a long digest would be cut at the fold.

A preview must never touch the network. The email's images are tracking pixels and remote
pictures; fetching them would register opens and make the preview as slow as the slowest host.
Two locks, because neither covers everything: the host resolver maps every host, IP addresses
included, to "not found" (so no DNS lookup leaks either), which also stops what the browser
fetches on its own (``<link rel=prefetch>``, preconnects), which the ``Fetch`` domain never sees;
and every request the page makes is paused by ``Fetch`` and failed on the spot, whatever the
network stack's configuration. Scripts are off, as in mail clients. The HTML itself goes in with
``Page.setDocumentContent``, so it is never requested at all.

One browser serves all viewports, each in a fresh tab, and the browser's whole process group
and its throwaway profile are removed however the call ends.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install it (apt-get install chromium) or set DIGEST_CHROMIUM to the browser's path"

# In CSS pixels. A larger page is cut rather than failed: Chromium cannot paint a bitmap of any
# size (one unbroken 3 MB word is millions of pixels wide), and no digest comes near these.
MAX_WIDTH = 4096
MAX_HEIGHT = 20000

log = logging.getLogger(__name__)

# Chromium reads protocol messages on fd 3 and writes them on fd 4 (devtools_pipe.h).
_CHILD_READ_FD = 3
_CHILD_WRITE_FD = 4


class ScreenshotError(Exception):
    """No screenshot could be taken; the message says why in words an editor can act on."""


@dataclass(frozen=True)
class Viewport:
    """A screen to render on, in CSS pixels. ``height`` is only the visible part: the capture
    always covers the whole page. ``mobile`` turns on a phone's viewport handling (the
    ``<meta name="viewport">`` tag, overlay scrollbars); ``scale`` is the device pixel ratio, so
    the PNG is ``width * scale`` pixels wide."""

    name: str
    width: int
    height: int
    mobile: bool
    scale: float


# An email column is 600 px: a 1024 px desktop shows it with margins, and 375 px (a common phone
# width) is below the usual ``max-width: 600px`` breakpoint, so the mobile rules apply.
DESKTOP = Viewport("desktop", 1024, 768, mobile=False, scale=1.0)
MOBILE = Viewport("mobile", 375, 667, mobile=True, scale=2.0)


def find_browser(browser: str | None = None) -> str:
    """The path of the Chromium to run: ``browser`` (a path or a name on PATH) if given,
    otherwise the first of :data:`BROWSER_NAMES` found on PATH."""
    candidates = (browser,) if browser else BROWSER_NAMES
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    if browser:
        raise ScreenshotError(f"no Chromium at {browser!r}: {INSTALL_HINT}")
    tried = ", ".join(BROWSER_NAMES)
    raise ScreenshotError(f"no Chromium found on PATH (tried {tried}): {INSTALL_HINT}")


def screenshot(
    html: str,
    viewports: Sequence[Viewport],
    *,
    browser: str | None = None,
    timeout: float = 30.0,
) -> dict[str, bytes]:
    """PNG bytes of ``html`` rendered full-page at each viewport, keyed by viewport name.

    ``timeout`` bounds the whole call, browser start included; ScreenshotError if it runs out,
    if Chromium is missing or if it fails.
    """
    names = [viewport.name for viewport in viewports]
    if len(set(names)) != len(names):
        raise ValueError(f"viewport names must be unique: {names}")
    path = find_browser(browser)
    with _Chromium(path, timeout) as chromium:
        return {viewport.name: _capture(chromium, html, viewport) for viewport in viewports}


def _capture(chromium: _Chromium, html: str, viewport: Viewport) -> bytes:
    target = chromium.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = chromium.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    # Blocking goes first, before the page holds anything that could make a request.
    chromium.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
    chromium.call("Emulation.setScriptExecutionDisabled", {"value": True}, session)
    chromium.call(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": viewport.width,
            "height": viewport.height,
            "deviceScaleFactor": viewport.scale,
            "mobile": viewport.mobile,
        },
        session,
    )
    chromium.call("Page.enable", {}, session)
    frame = chromium.call("Page.getFrameTree", {}, session)["frameTree"]["frame"]["id"]
    chromium.call("Page.setDocumentContent", {"frameId": frame, "html": html}, session)
    # about:blank's own load event may still be on its way; the one after documentOpened is
    # ours, and it fires once every (blocked) image has failed, so the layout is final.
    chromium.wait_for("Page.documentOpened", session)
    chromium.wait_for("Page.loadEventFired", session)
    metrics = chromium.call("Page.getLayoutMetrics", {}, session)
    content = metrics["cssContentSize"]
    width, height = min(content["width"], MAX_WIDTH), min(content["height"], MAX_HEIGHT)
    if (width, height) != (content["width"], content["height"]):
        log.warning(
            "the %s preview shows %d x %d px of a %d x %d px page",
            viewport.name,
            width,
            height,
            content["width"],
            content["height"],
        )
    # A phone zooms out a page wider than the screen (an email without a viewport tag lays out
    # at 980 px); capturing at that zoom shows what the reader sees, not a 980 px page.
    zoom = metrics["cssVisualViewport"].get("scale", 1.0)
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": zoom}
    shot = chromium.call(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": clip},
        session,
    )
    chromium.call("Target.closeTarget", {"targetId": target})
    return base64.b64decode(shot["data"])


class _Chromium:
    """A headless Chromium for the duration of a ``with`` block, spoken to over the pipe."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.pid = 0
        self.profile = ""
        self.log = Path()
        self.to_browser = -1
        self.from_browser = -1
        self.buffer = bytearray()
        self.scanned = 0
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> _Chromium:
        self.profile = tempfile.mkdtemp(prefix="digest-chromium-")
        self.log = Path(self.profile, "chromium.log")
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> None:
        child_read, self.to_browser = os.pipe()
        self.from_browser, child_write = os.pipe()
        # The child's ends are moved to fds 3 and 4 by dup2; lifting them above 4 first means
        # neither dup2 can overwrite the other's source.
        child_read, child_write = _above(child_read, 5), _above(child_write, 5)
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        argv = [
            self.path,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            # Containers give /dev/shm 64 MB, too little for a tall page's bitmap.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--no-proxy-server",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
        ]
        try:
            # posix_spawn rather than subprocess: fds 3 and 4 must be remapped in the child,
            # which subprocess can do only with preexec_fn, unsafe in threaded callers.
            # setsid gives the browser its own process group, so one kill reaches its helpers.
            self.pid = os.posix_spawn(
                self.path,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                    (os.POSIX_SPAWN_DUP2, child_read, _CHILD_READ_FD),
                    (os.POSIX_SPAWN_DUP2, child_write, _CHILD_WRITE_FD),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise ScreenshotError(f"cannot start {self.path}: {exc.strerror}") from exc
        finally:
            for fd in (child_read, child_write, log):
                os.close(fd)
        os.set_blocking(self.to_browser, False)
        os.set_blocking(self.from_browser, False)

    def _stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
        for fd in (self.to_browser, self.from_browser):
            if fd >= 0:
                os.close(fd)
        self.to_browser = self.from_browser = -1
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        """Send one command and return its result, handling events that arrive meanwhile."""
        self.last_id += 1
        command_id = self.last_id
        self._send({"id": command_id, "method": method, "params": params}, session)
        while True:
            message = self._receive()
            if message.get("id") != command_id:
                continue
            if "error" in message:
                detail = message["error"].get("message", message["error"])
                raise ScreenshotError(f"Chromium refused {method}: {detail}")
            return message["result"]

    def wait_for(self, event: str, session: str) -> dict[str, Any]:
        """The next ``event`` from ``session``; events queued before it are dropped."""
        while True:
            for index, message in enumerate(self.events):
                if message["method"] == event and message.get("sessionId") == session:
                    del self.events[: index + 1]
                    return message
            self.events.clear()
            self._receive()

    def _send(self, message: dict[str, Any], session: str | None) -> None:
        if session:
            message["sessionId"] = session
        data = memoryview(json.dumps(message).encode() + b"\0")
        while data:
            _, writable, _ = select.select([], [self.to_browser], [], self._remaining())
            if not writable:
                self._timed_out()
            try:
                data = data[os.write(self.to_browser, data) :]
            except BrokenPipeError:
                self._exited()

    def _receive(self) -> dict[str, Any]:
        """Read the next message; a paused request is failed here, whatever the caller waits on,
        so that no code path can leave the page waiting on the network."""
        # Only the bytes not yet searched are searched: a screenshot arrives as megabytes of
        # base64 in 64 KiB reads.
        while (end := self.buffer.find(b"\0", self.scanned)) < 0:
            self.scanned = len(self.buffer)
            readable, _, _ = select.select([self.from_browser], [], [], self._remaining())
            if not readable:
                self._timed_out()
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                self._exited()
            self.buffer += chunk
        message: dict[str, Any] = json.loads(self.buffer[:end])
        del self.buffer[: end + 1]
        self.scanned = 0
        if message.get("method") == "Fetch.requestPaused":
            self.last_id += 1
            blocked = {
                "requestId": message["params"]["requestId"],
                "errorReason": "BlockedByClient",
            }
            self._send(
                {"id": self.last_id, "method": "Fetch.failRequest", "params": blocked},
                message.get("sessionId"),
            )
        elif "method" in message:
            self.events.append(message)
        return message

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._timed_out()
        return remaining

    def _timed_out(self) -> NoReturn:
        raise ScreenshotError(f"Chromium did not finish the screenshots within {self.timeout:g} s")

    def _exited(self) -> NoReturn:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        detail = "; ".join(lines[-3:]) or "no output"
        raise ScreenshotError(f"Chromium ({self.path}) stopped before the screenshots: {detail}")


def _above(fd: int, lowest: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered ``lowest`` or higher; ``fd`` is closed."""
    duplicate = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return duplicate
