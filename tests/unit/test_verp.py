"""VERP return paths: one per delivery, signed, readable back only when genuine."""

from __future__ import annotations

import pytest

from digest.verp import delivery_of, verp_address

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
