"""DKIM signing: what is signed, that a verifier accepts it, and how it is configured."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from digest.config import ConfigError, load_settings
from digest.db import session_factory
from digest.models import utcnow
from digest.selection import Reader
from digest.sending import EditionMailer, Recipient
from tests.support import prepare_sample_edition

SELECTOR = "digest2026"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _dns(key: rsa.RSAPrivateKey):
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.news.example.com.".encode() else None

    return lookup


@pytest.fixture
def key_file(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


def _signed_message(env: dict[str, str], key_file: Path) -> bytes:
    env.update(DIGEST_DKIM_SELECTOR=SELECTOR, DIGEST_DKIM_KEY_FILE=str(key_file))
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 1)
    with session_factory(settings.database_url)() as session:
        mailer = EditionMailer(session, settings, session.merge(edition))
        return mailer.message(
            Recipient(1, 1, "reader001@example.org", True, Reader()), utcnow()
        ).data


def test_an_edition_message_is_signed_and_verifies(env, key_file, key) -> None:
    message = _signed_message(env, key_file)
    assert message.startswith(b"DKIM-Signature: ")
    assert dkim.verify(message, dnsfunc=_dns(key))
    signature = message.split(b"\r\n\r\n", 1)[0].decode()
    signed = re.search(r"h=([^;]+)", re.sub(r"\s+", "", signature)).group(1).lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "feedback-id", "from"} <= set(signed)
    assert "d=news.example.com" in signature and f"s={SELECTOR}" in signature


def test_a_changed_signed_header_fails_verification(env, key_file, key) -> None:
    message = _signed_message(env, key_file)
    # The header may be folded right after its colon.
    tampered = re.sub(
        rb"List-Unsubscribe:\s*<[^>]+>", b"List-Unsubscribe: <https://evil.example/>", message
    )
    assert tampered != message
    assert not dkim.verify(tampered, dnsfunc=_dns(key))


def test_without_dkim_settings_nothing_is_signed(env) -> None:
    settings = load_settings(env)
    edition = prepare_sample_edition(settings, 1)
    with session_factory(settings.database_url)() as session:
        mailer = EditionMailer(session, settings, session.merge(edition))
        message = mailer.message(
            Recipient(1, 1, "reader001@example.org", True, Reader()), utcnow()
        ).data
    assert b"DKIM-Signature" not in message


@pytest.mark.parametrize("missing", ["DIGEST_DKIM_SELECTOR", "DIGEST_DKIM_KEY_FILE"])
def test_half_a_dkim_configuration_is_an_error(env, key_file, missing) -> None:
    env.update(DIGEST_DKIM_SELECTOR=SELECTOR, DIGEST_DKIM_KEY_FILE=str(key_file))
    del env[missing]
    with pytest.raises(ConfigError, match="needs both"):
        load_settings(env)


def test_an_unusable_key_file_is_an_error_naming_it(env, tmp_path) -> None:
    env["DIGEST_DKIM_SELECTOR"] = SELECTOR
    env["DIGEST_DKIM_KEY_FILE"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"missing\.pem.*cannot be read"):
        load_settings(env)
    (tmp_path / "junk.pem").write_text("not a key")
    env["DIGEST_DKIM_KEY_FILE"] = str(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_settings(env)


def test_the_key_never_appears_in_the_settings_repr(env, key_file) -> None:
    env.update(DIGEST_DKIM_SELECTOR=SELECTOR, DIGEST_DKIM_KEY_FILE=str(key_file))
    settings = load_settings(env)
    assert settings.dkim_key is not None
    assert "PRIVATE KEY" not in repr(settings)


def test_a_key_dkim_cannot_sign_with_is_refused(env, tmp_path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env.update(DIGEST_DKIM_SELECTOR=SELECTOR, DIGEST_DKIM_KEY_FILE=str(path))
    with pytest.raises(ConfigError, match="must hold an RSA private key"):
        load_settings(env)
