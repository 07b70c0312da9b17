"""Signed per-delivery addresses. Each message's envelope sender names its delivery (VERP),
so a bounce that comes back to it says which delivery bounced without parsing the bounce's
text; its mailto unsubscribe address names it too, so a reader's unsubscribe mail says whose
subscription ends. Each address carries an HMAC, so nobody can forge one for another delivery.

    bounces+<delivery id>-<mac>@<DIGEST_BOUNCE_DOMAIN>
    unsubscribe+<delivery id>-<mac>@<DIGEST_BOUNCE_DOMAIN, else the From domain>

Lower-case hex only: some mail servers lower-case local parts on the way back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

MAC_LENGTH = 12
BOUNCES = "bounces"
UNSUBSCRIBE = "unsubscribe"
_TAGGED = re.compile(r"^([a-z]+)\+(\d+)-([0-9a-f]+)@(.+)$")


def short_mac(key: str, message: str, length: int = MAC_LENGTH) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:length]


def _mac(key: str, purpose: str, delivery_id: int) -> str:
    # The bounce MAC keeps its original message ("verp:<id>") so addresses already sent stay
    # readable.
    return short_mac(key, f"{'verp' if purpose == BOUNCES else purpose}:{delivery_id}")


def tagged_address(keys: Sequence[str], purpose: str, domain: str, delivery_id: int) -> str:
    # The oldest key changes least often under rotation (keys are listed newest first).
    return f"{purpose}+{delivery_id}-{_mac(keys[-1], purpose, delivery_id)}@{domain}"


def tagged_delivery(keys: Sequence[str], purpose: str, address: str) -> int | None:
    """The delivery a signed address of this purpose names, or None if it is not one of ours
    (any key signed)."""
    match = _TAGGED.match(address.strip().strip("<>").lower())
    if match is None or match[1] != purpose:
        return None
    delivery_id, mac = int(match[2]), match[3]
    expected = (_mac(key, purpose, delivery_id) for key in keys)
    return delivery_id if any(hmac.compare_digest(mac, m) for m in expected) else None


def verp_address(keys: Sequence[str], bounce_domain: str, delivery_id: int) -> str:
    return tagged_address(keys, BOUNCES, bounce_domain, delivery_id)


def delivery_of(keys: Sequence[str], address: str) -> int | None:
    """The delivery a VERP address names, or None if it is not one of ours."""
    return tagged_delivery(keys, BOUNCES, address)
