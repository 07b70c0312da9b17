"""The server every fake platform runs on: routing, JSON helpers and failure injection."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise Reply(400, {"error": f"body is not JSON: {exc}"}) from exc

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


class Reply(Exception):
    """Raise (or return) to answer: status, a JSON-able body (or bytes), headers."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Failure:
    """An injected failure for the next matching request. ``after_effect``: the request is
    handled (the post is made) and then the failure is answered instead, the "unclear" case
    where a post landed but the client saw an error. ``drop``: close without answering."""

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_effect: bool = False
    drop: bool = False
    method: str | None = None
    path: str | None = None  # a regex matched against the path


Handler = Callable[[Request], Reply]


class FakeServer:
    """Subclasses register routes with ``self.route(method, pattern, handler)``; the pattern
    is a regex with named groups, matched against the whole path."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.failures: list[Failure] = []
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def reset(self) -> Self:
        """Forget requests and pending failures, so one server can serve a module's tests;
        fakes with state of their own extend this."""
        with self.lock:
            self.requests.clear()
            self.failures.clear()
        return self

    def fail_next(self, failure: Failure | None = None, times: int = 1, **kwargs: Any) -> None:
        with self.lock:
            self.failures.extend([failure or Failure(**kwargs)] * times)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        # stop() waits for the serve loop to notice: poll often, or every test's teardown
        # takes the default half second.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _take_failure(self, request: Request) -> Failure | None:
        with self.lock:
            for n, failure in enumerate(self.failures):
                if (failure.method is None or failure.method == request.method) and (
                    failure.path is None or re.search(failure.path, request.path)
                ):
                    return self.failures.pop(n)
        return None

    def _dispatch(self, http: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        request = Request(
            method=http.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in http.headers.items()},
            body=http.rfile.read(length) if length else b"",
        )
        with self.lock:
            self.requests.append(request)
        failure = self._take_failure(request)
        if failure is not None and failure.drop and not failure.after_effect:
            http.close_connection = True
            http.connection.close()
            return
        # Only an ``after_effect`` failure lets the request act (make the post) first.
        if failure is None or failure.after_effect:
            reply = self._handle(request)
        if failure is not None:
            if failure.drop:
                http.close_connection = True
                http.connection.close()
                return
            reply = Reply(failure.status, failure.body, failure.headers)
        body = reply.body
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        http.send_response(reply.status)
        headers = {"Content-Type": "application/json", **reply.headers}
        for name, value in headers.items():
            http.send_header(name, value)
        http.send_header("Content-Length", str(len(payload)))
        http.end_headers()
        http.wfile.write(payload)

    def _handle(self, request: Request) -> Reply:
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                request.params = match.groupdict()
                try:
                    return handler(request)
                except Reply as reply:
                    return reply
        return Reply(404, {"error": f"no route {request.method} {request.path}"})
