"""Social credentials encrypted at rest with MultiFernet, keyed from DIGEST_SECRET_KEYS.

Each secret key yields its own Fernet key through HKDF with a purpose label, so the key that
signs tracked links never doubles as an encryption key. The newest key (first in the list)
encrypts; every listed key decrypts, so a key can be rotated in: put the new one first, run
``digest social rekey`` to re-encrypt every account. The same keys sign tracked links, so an
old key stays listed while links signed with it (emails, posts) should keep working; once
rekeyed, the credentials no longer need it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PURPOSE = b"newsroom-digest social credentials v1"


class CredentialsUnreadable(Exception):
    """The stored credentials cannot be decrypted with any configured key."""


def _fernet(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


class Vault:
    def __init__(self, secret_keys: tuple[str, ...]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed to encrypt credentials")
        self._fernet = MultiFernet([_fernet(key) for key in secret_keys])

    def seal(self, credentials: Mapping[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(dict(credentials), sort_keys=True).encode())

    def open(self, sealed: bytes | None) -> dict[str, Any]:
        if not sealed:
            return {}
        try:
            value = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise CredentialsUnreadable(
                "the account's credentials were encrypted with a key that is no longer in "
                "DIGEST_SECRET_KEYS: add that key back, or connect the account again"
            ) from None
        if not isinstance(value, dict):
            raise CredentialsUnreadable("the stored credentials are not an object")
        return value

    def rekey(self, sealed: bytes) -> bytes:
        """``sealed`` encrypted again with the newest key."""
        try:
            return self._fernet.rotate(sealed)
        except InvalidToken:
            raise CredentialsUnreadable(
                "credentials encrypted with a key no longer configured"
            ) from None
