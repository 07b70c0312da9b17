"""Fetching a source's documents: conditional GET, caps on size and time, and an SSRF guard.

The guard sits in the connection layer (an httpcore network backend), not in front of the
request: every TCP connection, including each redirect hop, resolves the host once, refuses the
connection if any address is private, loopback, link-local or otherwise not public (unless
allow-listed), and then connects to the very address it checked, so a DNS answer that changes
between the check and the connect (rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpcore

from digest import __version__
from digest.config import Settings

MAX_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5
TIMEOUT_SECONDS = 20.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """The document could not be fetched; the message says why in words an editor can act on."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks that may be fetched although they are not public
    (``DIGEST_FETCH_ALLOWLIST``: comma-separated host names and CIDRs)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> Allowlist:
        hosts, networks = set(), []
        for entry in (e.strip() for e in raw.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if host.lower().rstrip(".") in self.hosts or any(ip in n for n in self.networks):
            return True
        return ip.is_global and not ip.is_multicast


class _GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise FetchError(f"cannot resolve {host}: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        refused = [a for a in addresses if not self.allowlist.permits(host, a)]
        if refused:
            raise FetchError(
                f"refused to connect to {host} ({', '.join(refused)}): not a public address; "
                "add it to DIGEST_FETCH_ALLOWLIST if it is trusted"
            )
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, socket_options or []
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise FetchError(f"cannot connect to {host}:{port}: {last}")


@dataclass(frozen=True)
class Fetched:
    """A fetched document; ``body`` is None when the server said it has not changed (304)."""

    url: str
    body: bytes | None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""


class Fetcher:
    """One connection pool, reused for a whole ingest run."""

    def __init__(
        self,
        allowlist: Allowlist,
        local_root: Path | None = None,
        max_bytes: int = MAX_BYTES,
        timeout: float = TIMEOUT_SECONDS,
        contact_url: str = "",
    ) -> None:
        # Site operators who see us in their logs can tell what we are and who runs us.
        self.user_agent = f"NewsroomDigest/{__version__} (+{contact_url})".replace(" (+)", "")
        self.local_root = local_root.resolve() if local_root else None
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(),
            network_backend=_GuardedBackend(allowlist),
            max_connections=8,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Fetcher:
        return cls(
            Allowlist.parse(settings.fetch_allowlist),
            local_root=settings.data_dir,
            contact_url=settings.base_url,
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            return Fetched(url, self._read_local(url))
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise FetchError(f"{url}: only http and https URLs can be fetched")
            headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
            if etag:
                headers["If-None-Match"] = etag
            if last_modified:
                headers["If-Modified-Since"] = last_modified
            status, response_headers, body = self._request(url, headers, deadline)
            if status in (301, 302, 303, 307, 308) and "location" in response_headers:
                url = urljoin(url, response_headers["location"])
                continue
            if status == 304:
                return Fetched(url, None, etag, last_modified)
            if status != 200:
                raise FetchError(f"{url} answered HTTP {status}")
            return Fetched(
                url,
                body,
                response_headers.get("etag"),
                response_headers.get("last-modified"),
                response_headers.get("content-type", ""),
            )
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _request(
        self, url: str, headers: Mapping[str, str], deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{url}: gave up after {self.timeout:g}s")
        timeouts = {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
        try:
            with self._pool.stream(
                "GET", url, headers=list(headers.items()), extensions={"timeout": timeouts}
            ) as response:
                response_headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers
                }
                chunks, size = [], 0
                if response.status == 200:
                    for chunk in response.iter_stream():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise FetchError(f"{url} is larger than {self.max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise FetchError(f"{url}: gave up after {self.timeout:g}s")
                        chunks.append(chunk)
                return response.status, response_headers, b"".join(chunks)
        except httpcore.TimeoutException as exc:
            raise FetchError(f"{url}: timed out") from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise FetchError(f"{url}: {exc or type(exc).__name__}") from exc

    def _read_local(self, url: str) -> bytes:
        """Local files are read only from inside the data directory (the demo's sample site,
        files an operator placed there), never from elsewhere on the machine."""
        path = Path(unquote(urlsplit(url).path)).resolve()
        if self.local_root is None or not path.is_relative_to(self.local_root):
            raise FetchError(f"{path}: local files are read only from inside DIGEST_DATA_DIR")
        try:
            with path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > self.max_bytes:
            raise FetchError(f"{path} is larger than {self.max_bytes} bytes")
        return data
