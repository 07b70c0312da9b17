"""Signed tokens: round trips, tampering, purpose separation, key rotation, odd payloads."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from itsdangerous import URLSafeSerializer

from digest.tokens import CLICK, CONFIRM_MAX_AGE_SECONDS, OPEN, UNSUBSCRIBE, TokenSigner, _Minter

KEYS = ("current-key", "previous-key")


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(KEYS)


READERS = {
    "click": TokenSigner.read_click_token,
    "open": TokenSigner.read_open_token,
    "unsubscribe": TokenSigner.read_unsubscribe_token,
    "preferences": TokenSigner.read_preferences_token,
    "confirm": TokenSigner.read_confirm_token,
}


@dataclass(frozen=True)
class Purpose:
    mint: Callable[..., str]
    reader: str
    args: tuple[Any, ...]

    def read(self, signer: TokenSigner, token: str) -> Any:
        return READERS[self.reader](signer, token)

    @property
    def expected(self) -> Any:
        return self.args[0] if len(self.args) == 1 else self.args


PURPOSES = {
    "click": Purpose(TokenSigner.click_token, "click", (41, 7)),
    "click-no-delivery": Purpose(TokenSigner.click_token, "click", (41, None)),
    "open": Purpose(TokenSigner.open_token, "open", (7,)),
    "unsubscribe": Purpose(TokenSigner.unsubscribe_token, "unsubscribe", (3, 9, 27)),
    "preferences": Purpose(TokenSigner.preferences_token, "preferences", (3, 9)),
}
CROSSED = [(p, r) for p, purpose in PURPOSES.items() for r in READERS if r != purpose.reader]


def _b64(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("name", PURPOSES)
def test_round_trip(signer, name):
    purpose = PURPOSES[name]

    assert purpose.read(signer, purpose.mint(signer, *purpose.args)) == purpose.expected


def _other_signature(token: str) -> str:
    payload, signature = token.rsplit(".", 1)
    # The first character: the last one of a base64 signature partly encodes padding bits.
    first = "B" if signature[0] != "B" else "C"
    return f"{payload}.{first}{signature[1:]}"


def _other_payload(token: str) -> str:
    # A payload the reader would accept if it were signed: the first id plus one.
    payload, signature = token.rsplit(".", 1)
    value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    value = value + 1 if isinstance(value, int) else [value[0] + 1, *value[1:]]
    return f"{_b64(value)}.{signature}"


@pytest.mark.parametrize("tamper", [_other_signature, _other_payload])
@pytest.mark.parametrize("name", PURPOSES)
def test_tampered_token_is_rejected(signer, name, tamper):
    purpose = PURPOSES[name]

    assert purpose.read(signer, tamper(purpose.mint(signer, *purpose.args))) is None


@pytest.mark.parametrize("token", ["", ".", "garbage", "a.b.c", "WzEsMl0", "WzEsMl0.", "é.é"])
@pytest.mark.parametrize("reader", READERS.values(), ids=READERS)
def test_garbage_is_rejected(signer, reader, token):
    assert reader(signer, token) is None


@pytest.mark.parametrize(("name", "reader"), CROSSED)
def test_token_of_another_purpose_is_rejected(signer, name, reader):
    purpose = PURPOSES[name]

    assert READERS[reader](signer, purpose.mint(signer, *purpose.args)) is None


@pytest.mark.parametrize("name", PURPOSES)
def test_token_signed_with_another_key_is_rejected(name):
    purpose = PURPOSES[name]

    assert (
        purpose.read(TokenSigner(("other",)), purpose.mint(TokenSigner(KEYS), *purpose.args))
        is None
    )


@pytest.mark.parametrize("name", PURPOSES)
def test_rotation_keeps_old_tokens_and_signs_with_the_new_key(name):
    purpose = PURPOSES[name]
    before = TokenSigner(("old",))
    rotated = TokenSigner(("new", "old"))

    assert purpose.read(rotated, purpose.mint(before, *purpose.args)) == purpose.expected
    fresh = purpose.mint(rotated, *purpose.args)
    assert purpose.read(TokenSigner(("new",)), fresh) == purpose.expected
    assert purpose.read(before, fresh) is None


def _hand_signed(salt: str, payload: Any) -> str:
    # Reversed as TokenSigner does: itsdangerous signs with the last key of its list.
    return URLSafeSerializer(list(reversed(KEYS)), salt=salt).dumps(payload)


@pytest.mark.parametrize(
    ("salt", "reader", "payload"),
    [
        (CLICK, TokenSigner.read_click_token, ["x", 1]),
        (CLICK, TokenSigner.read_click_token, [1, "2"]),
        (CLICK, TokenSigner.read_click_token, [1.5, None]),
        (CLICK, TokenSigner.read_click_token, [1]),
        (CLICK, TokenSigner.read_click_token, [1, 2, 3]),
        (CLICK, TokenSigner.read_click_token, 5),
        (CLICK, TokenSigner.read_click_token, None),
        (CLICK, TokenSigner.read_click_token, {"a": 1, "b": 2}),
        (OPEN, TokenSigner.read_open_token, "7"),
        (OPEN, TokenSigner.read_open_token, 7.0),
        (OPEN, TokenSigner.read_open_token, [7]),
        (OPEN, TokenSigner.read_open_token, None),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, ["x", 1]),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, [1, None]),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, [1]),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, "1,2"),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, 12),
    ],
)
def test_validly_signed_payload_of_wrong_shape_is_rejected(salt, reader, payload):
    assert reader(TokenSigner(KEYS), _hand_signed(salt, payload)) is None


@pytest.mark.parametrize(
    ("salt", "reader", "payload", "expected"),
    [
        (CLICK, TokenSigner.read_click_token, [1, None], (1, None)),
        (OPEN, TokenSigner.read_open_token, 7, 7),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, [1, 2], (1, 2, None)),
        (UNSUBSCRIBE, TokenSigner.read_unsubscribe_token, [1, 2, 3], (1, 2, 3)),
    ],
)
def test_hand_signed_payload_of_right_shape_is_accepted(salt, reader, payload, expected):
    # The control for the test above: the rejections come from the shape, not the signing.
    assert reader(TokenSigner(KEYS), _hand_signed(salt, payload)) == expected


def test_confirmation_token_round_trip_tamper_and_purpose(signer):
    token = signer.confirm_token(3, 9)

    assert signer.read_confirm_token(token) == (3, 9)
    assert signer.read_confirm_token(_other_signature(token)) is None
    assert signer.read_preferences_token(token) is None
    assert signer.read_confirm_token(signer.preferences_token(3, 9)) is None


def test_confirmation_token_expires(signer, monkeypatch):
    token = signer.confirm_token(3, 9)
    later = time.time() + CONFIRM_MAX_AGE_SECONDS + 60
    monkeypatch.setattr(time, "time", lambda: later)

    assert signer.read_confirm_token(token) is None


@pytest.mark.parametrize(
    "value",
    [0, 7, 2**63 - 1, [41, 7], [41, None], [3, 9, 27], [2**62, 2**62, 2**62], list(range(40))],
)
@pytest.mark.parametrize("salt", [CLICK, OPEN, UNSUBSCRIBE])
def test_minted_tokens_are_what_itsdangerous_makes_and_reads(value, salt) -> None:
    # The fast path must never drift from the format every issued link already carries. The
    # last two values compress shorter, so itsdangerous would send them through zlib (its
    # tokens then start with a dot), which the minter never does: those differ, and still read
    # back.
    serializer = URLSafeSerializer(list(reversed(KEYS)), salt=salt)
    token = _Minter(serializer)(value)
    assert serializer.loads(token) == value
    reference = serializer.dumps(value)
    assert token == reference or reference.startswith(".")
