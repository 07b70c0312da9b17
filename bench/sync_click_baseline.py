"""The baseline for bench/click_bench.py: the click route with one synchronous insert per request.

Bench-only, never imported by the project. The same token verification and the same link
lookup as ``/c/{token}`` (TokenSigner, and digest.web.app's LinkCache over the database), then
the click stored the way the journal's flush stores it (``digest.event_journal.store``: the
delivery's send time for classification, one INSERT, one COMMIT) before the 302. A bare ASGI
callable, so that no framework cost is charged to the baseline.

The insert runs on the event loop itself, on one pooled connection per worker with no ping on
checkout: the fastest way measured here. Handing it to a thread pool as a plain ``def`` route
would (8 threads, 8 connections) served ~1,000 requests/s against ~1,250 inline, the threads
waiting on each other for the GIL between round trips; SQLAlchemy's default pool (5 + 10
overflow) behind Starlette's 40 threads ~780, opening and closing connections all the time.

click_bench.py serves it with uvicorn the way ``digest web`` serves the app:

    .venv/bin/python -m uvicorn sync_click_baseline:create_app --factory --app-dir bench \\
        --host 127.0.0.1 --port PORT --workers 2
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from digest.config import load_settings
from digest.event_journal import Event, store
from digest.models import utcnow
from digest.tokens import TokenSigner
from digest.tracking import USER_AGENT_MAX, truncate_ip
from digest.web.app import NO_STORE, LinkCache

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}
NO_STORE_HEADER = (b"cache-control", NO_STORE["Cache-Control"].encode())


def create_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    settings = load_settings()
    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    sessions = sessionmaker(engine, expire_on_commit=False)
    signer = TokenSigner(settings.secret_keys)
    links = LinkCache(sessions)
    prefix = f"sync-{os.getpid()}-{time.time_ns()}"
    keys = itertools.count()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        ids = signer.read_click_token(path[3:]) if path.startswith("/c/") else None
        location = await links.location(ids[0]) if ids else None
        if ids is None or location is None:
            await send(NOT_FOUND)
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["method"] == "GET":
            headers = dict(scope["headers"])
            agent = headers.get(b"user-agent", b"").decode("latin-1") or None
            client = scope.get("client")
            event = Event(
                key=f"{prefix}:{next(keys)}",
                table="clicks",
                at=utcnow(),
                delivery_id=ids[1],
                link_id=ids[0],
                ip_prefix=truncate_ip(client[0] if client else None),
                user_agent=agent[:USER_AGENT_MAX] if agent else None,
            )
            with sessions() as session:
                store(session, [event])  # blocks this worker until the COMMIT returns
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", location),
                    NO_STORE_HEADER,
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    return app
