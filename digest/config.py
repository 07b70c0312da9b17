"""Configuration from the environment.

Every variable has a working default so that a fresh clone runs with nothing installed but
Python: a SQLite database, kombu's SQLAlchemy transport on a second SQLite file as the broker,
and a ``file://`` outbox instead of a mail server, all inside ``DIGEST_DATA_DIR``.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET_KEY_FILE = "secret.key"


class ConfigError(ValueError):
    """A setting is present but unusable; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    broker_url: str
    smtp_url: str
    base_url: str
    secret_keys: tuple[str, ...]
    from_address: str
    queue: str
    fetch_allowlist: str
    api_tokens: tuple[str, ...]
    tracking: bool
    tracking_flush_seconds: float
    tracking_retention_days: int
    batch_size: int
    tick_seconds: float
    # An edition with claimable rows nobody claimed for this long is dispatched again (its
    # broker messages were lost: a broker restarted without persistence, a purged queue).
    stall_seconds: float
    # A social post's first retry waits about this long, doubling after (capped at an hour);
    # a read-back after an unclear failure waits at least half of it.
    social_retry_seconds: float
    log_format: str
    log_level: str
    # Messages per second for the whole installation; None: as fast as the workers go.
    send_rate: float | None
    # Messages per second per destination domain (lower-case), for the domains listed.
    domain_rates: dict[str, float]
    # VERP return paths at this domain (digest.verp); None: bounces go to the From address.
    bounce_domain: str | None
    # Bounces, complaints and mailto unsubscribes are read from here (digest.mailboxes URL);
    # None: only the webhook receives them.
    inbound_mailbox: str | None
    # A subscription whose last this-many editions drew nothing human is sunset (digest.sunset).
    sunset_editions: int
    # The browser for edition previews (a path or a name on PATH); None: look for chromium.
    chromium: str | None
    # DKIM signing (d= is the From address's domain): both set, or neither.
    dkim_selector: str | None
    dkim_key: bytes | None = field(repr=False)  # never in a log line or a traceback

    @property
    def sender_domain(self) -> str:
        return parseaddr(self.from_address)[1].rpartition("@")[2] or "localhost"


def redact_url(url: str) -> str:
    """The URL (or comma-separated URLs) with any password replaced, for showing to people."""
    return ",".join(
        re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", part.strip(), flags=re.I)
        for part in url.split(",")
    )


def _secret_keys(env: Mapping[str, str], data_dir: Path) -> tuple[str, ...]:
    configured = [k.strip() for k in env.get("DIGEST_SECRET_KEYS", "").split(",") if k.strip()]
    if configured:
        return tuple(configured)
    # The embedded default: one key generated on first use and kept beside the database, so
    # links signed yesterday still verify today. Written with O_EXCL so two processes starting
    # at once cannot each write a different key.
    path = data_dir / SECRET_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if not key:
            raise ConfigError(f"{path} is empty: delete it to generate a new key") from None
        return (key,)
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return (key,)


def _number(
    env: Mapping[str, str], name: str, default: str, kind: type[float] | type[int]
) -> float:
    raw = env.get(name, default).strip()
    try:
        value = kind(raw)
    except ValueError:
        noun = "whole number" if kind is int else "number"
        raise ConfigError(f"{name}={raw!r} is not a {noun}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a finite number greater than zero")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, default).strip()
    if raw.lower() not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return raw.lower()


def _switch(env: Mapping[str, str], name: str, default: str) -> bool:
    return _choice(env, name, default, ("on", "off")) == "on"


def _domain_rates(raw: str) -> dict[str, float]:
    rates = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        domain, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not sep or not domain.strip() or not math.isfinite(rate) or rate <= 0:
            raise ConfigError(
                f"DIGEST_DOMAIN_RATES: {item!r} is not DOMAIN=RATE with a rate above zero"
                " (e.g. gmail.com=20, yahoo.com=10)"
            )
        rates[domain.strip().lower()] = rate
    return rates


def _dkim(env: Mapping[str, str]) -> dict[str, Any]:
    selector = env.get("DIGEST_DKIM_SELECTOR", "").strip() or None
    key_file = env.get("DIGEST_DKIM_KEY_FILE", "").strip() or None
    if (selector is None) != (key_file is None):
        raise ConfigError(
            "DKIM signing needs both DIGEST_DKIM_SELECTOR and DIGEST_DKIM_KEY_FILE (or neither)"
        )
    if key_file is None:
        return {"dkim_selector": None, "dkim_key": None}
    try:
        key = Path(key_file).read_bytes()
        loaded = serialization.load_pem_private_key(key, password=None)
    except OSError as exc:
        raise ConfigError(f"DIGEST_DKIM_KEY_FILE={key_file!r} cannot be read: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"DIGEST_DKIM_KEY_FILE={key_file!r} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        # The only algorithm every receiver verifies (ed25519-sha256 is not yet widely).
        raise ConfigError(f"DIGEST_DKIM_KEY_FILE={key_file!r} must hold an RSA private key")
    return {"dkim_selector": selector, "dkim_key": key}


# How long claimable rows may sit untouched before the tick takes their edition up again
# (DIGEST_STALL_SECONDS): long enough that a backlog is not mistaken for a loss.
DEFAULT_STALL_SECONDS = 300

# How long one send task may send for before it hands the rest of its batch back to the queue:
# well inside the task's soft time limit (tasks/app.py, 270 s) and its rows' lease (10 min).
MAX_BATCH_SECONDS = 240


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("DIGEST_DATA_DIR", "var")).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    from_address = env.get("DIGEST_FROM", "Newsroom Digest <digest@news.example.com>")
    if "@" not in parseaddr(from_address)[1]:
        raise ConfigError(f"DIGEST_FROM={from_address!r} has no email address in it")
    settings = Settings(
        data_dir=data_dir,
        database_url=env.get("DIGEST_DATABASE_URL", f"sqlite:///{data_dir / 'digest.db'}"),
        broker_url=env.get("DIGEST_BROKER_URL", f"sqla+sqlite:///{data_dir / 'broker.db'}"),
        smtp_url=env.get("DIGEST_SMTP_URL", f"file://{data_dir / 'outbox'}"),
        base_url=env.get("DIGEST_BASE_URL", "http://127.0.0.1:8000").rstrip("/"),
        secret_keys=_secret_keys(env, data_dir),
        from_address=from_address,
        queue=env.get("DIGEST_QUEUE", "digest"),
        fetch_allowlist=env.get("DIGEST_FETCH_ALLOWLIST", ""),
        tracking=_switch(env, "DIGEST_TRACKING", "on"),
        tracking_flush_seconds=_number(env, "DIGEST_TRACKING_FLUSH_MS", "50", float) / 1000,
        tracking_retention_days=int(_number(env, "DIGEST_TRACKING_RETENTION_DAYS", "395", int)),
        api_tokens=tuple(
            t.strip() for t in env.get("DIGEST_API_TOKENS", "").split(",") if t.strip()
        ),
        batch_size=int(_number(env, "DIGEST_BATCH_SIZE", "100", int)),
        tick_seconds=_number(env, "DIGEST_TICK_SECONDS", "15", float),
        stall_seconds=_number(env, "DIGEST_STALL_SECONDS", str(DEFAULT_STALL_SECONDS), float),
        social_retry_seconds=_number(env, "DIGEST_SOCIAL_RETRY_SECONDS", "60", float),
        **_dkim(env),
        bounce_domain=env.get("DIGEST_BOUNCE_DOMAIN", "").strip().lower() or None,
        inbound_mailbox=env.get("DIGEST_INBOUND_MAILBOX", "").strip() or None,
        sunset_editions=int(_number(env, "DIGEST_SUNSET_EDITIONS", "30", int)),
        chromium=env.get("DIGEST_CHROMIUM", "").strip() or None,
        domain_rates=_domain_rates(env.get("DIGEST_DOMAIN_RATES", "")),
        send_rate=(
            _number(env, "DIGEST_SEND_RATE", "1", float) if env.get("DIGEST_SEND_RATE") else None
        ),
        log_format=_choice(env, "DIGEST_LOG_FORMAT", "text", ("text", "json")),
        log_level=_choice(
            env, "DIGEST_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
        ).upper(),
    )
    if settings.send_rate and settings.batch_size / settings.send_rate > MAX_BATCH_SECONDS:
        # A batch would always run out of time (and more so with several workers sharing the
        # rate): it would work, a part at a time, but the setting is surely a mistake.
        raise ConfigError(
            f"DIGEST_BATCH_SIZE={settings.batch_size} at DIGEST_SEND_RATE={settings.send_rate:g}"
            f" makes one batch take over {MAX_BATCH_SECONDS} s: lower the batch size to at most"
            f" {int(settings.send_rate * MAX_BATCH_SECONDS)}"
        )
    return settings
