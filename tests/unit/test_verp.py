"""VERP return paths: one per delivery, signed, readable back only when genuine."""

from __future__ import annotations

import pytest

from digest.verp import UNSUBSCRIBE, delivery_of, tagged_address, tagged_delivery, verp_address

KEYS = ("new-key", "old-key")


def test_an_address_names_its_delivery() -> None:
    address = verp_address(KEYS, "bounces.news.example.com", 4711)
    assert address.startswith("bounces+4711-") and address.endswith("@bounces.news.example.com")
    assert delivery_of(KEYS, address) == 4711


@pytest.mark.parametrize("form", [str.upper, lambda a: f"<{a}>", lambda a: f" {a} "])
def test_it_survives_what_mail_servers_do_to_it(form) -> None:
    address = verp_address(KEYS, "news.example.com", 12)
    assert delivery_of(KEYS, form(address)) == 12


def test_a_forged_or_foreign_address_is_not_ours() -> None:
    address = verp_address(KEYS, "news.example.com", 12)
    forged = address.replace("bounces+12-", "bounces+13-")
    assert delivery_of(KEYS, forged) is None
    assert delivery_of(("someone-else",), address) is None
    assert delivery_of(KEYS, "digest@news.example.com") is None
    assert delivery_of(KEYS, "bounces+x-abc@news.example.com") is None


def test_a_new_key_in_front_keeps_old_addresses_readable() -> None:
    address = verp_address(("old-key",), "news.example.com", 99)
    assert delivery_of(("newer-key", "old-key"), address) == 99


def test_unsubscribe_addresses_are_signed_apart_from_bounce_addresses() -> None:
    unsubscribe = tagged_address(KEYS, UNSUBSCRIBE, "news.example.com", 12)
    assert unsubscribe.startswith("unsubscribe+12-")
    assert tagged_delivery(KEYS, UNSUBSCRIBE, unsubscribe.upper()) == 12
    # Neither kind of address is accepted for the other purpose, even with its MAC moved over.
    assert delivery_of(KEYS, unsubscribe) is None
    assert delivery_of(KEYS, unsubscribe.replace("unsubscribe+", "bounces+")) is None
    assert tagged_delivery(KEYS, UNSUBSCRIBE, verp_address(KEYS, "news.example.com", 12)) is None
