"""VERP return paths: each message's envelope sender names its delivery, so a bounce that
comes back to it says which delivery bounced without parsing the bounce's text (issue 4 reads
them). The address carries an HMAC, so nobody can forge a bounce for another delivery.

    bounces+<delivery id>-<mac>@<DIGEST_BOUNCE_DOMAIN>

Lower-case hex only: some mail servers lower-case local parts on the way back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

MAC_LENGTH = 12
_VERP = re.compile(r"^bounces\+(\d+)-([0-9a-f]+)@(.+)$")


def short_mac(key: str, message: str, length: int = MAC_LENGTH) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:length]


def verp_address(keys: Sequence[str], bounce_domain: str, delivery_id: int) -> str:
    # The oldest key changes least often under rotation (keys are listed newest first).
    return f"bounces+{delivery_id}-{short_mac(keys[-1], f'verp:{delivery_id}')}@{bounce_domain}"


def delivery_of(keys: Sequence[str], address: str) -> int | None:
    """The delivery a VERP address names, or None if it is not one of ours (any key signed)."""
    match = _VERP.match(address.strip().strip("<>").lower())
    if match is None:
        return None
    delivery_id, mac = int(match[1]), match[2]
    expected = (short_mac(key, f"verp:{delivery_id}") for key in keys)
    return delivery_id if any(hmac.compare_digest(mac, m) for m in expected) else None
