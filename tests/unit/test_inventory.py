"""MAC/name/role rules and the fixed-address pool."""

from __future__ import annotations

import ipaddress

import pytest

from cloudctl.inventory import AddressPool, InventoryError, Role, parse_mac, parse_name, parse_role


@pytest.mark.parametrize(
    "text", ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "525400abcd01", " 52:54:00:ab:cd:01 "]
)
def test_mac_forms_normalise(text):
    assert parse_mac(text) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:01:02",
        "52:54-00:ab:cd:01",
        "g2:54:00:ab:cd:01",
        "ff:ff:ff:ff:ff:ff",
        "01:00:5e:00:00:01",
    ],
)
def test_bad_macs(text):
    with pytest.raises(InventoryError, match="invalid MAC address"):
        parse_mac(text)


def test_names_and_roles():
    assert parse_name("hn1") == "hn1"
    for bad in ("", "1abc", "a_b", "A", "a-", "x" * 64):
        with pytest.raises(InventoryError):
            parse_name(bad)
    assert parse_role("snode") is Role.SNODE
    with pytest.raises(InventoryError, match="choose one of hnode, snode"):
        parse_role("storage")


def _pool(subnet="10.0.0.0/28", first="10.0.0.8", last="10.0.0.10"):
    return AddressPool(
        subnet=ipaddress.IPv4Network(subnet),
        dynamic_first=ipaddress.IPv4Address(first),
        dynamic_last=ipaddress.IPv4Address(last),
        reserved=frozenset({ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2")}),
    )


def test_candidates_skip_reserved_and_dynamic_and_wrap():
    pool = _pool()
    as_text = lambda values: [str(ipaddress.IPv4Address(v)) for v in values]  # noqa: E731
    start = int(ipaddress.IPv4Address("10.0.0.12"))
    assert as_text(pool.candidates(start)) == [
        "10.0.0.12",
        "10.0.0.13",
        "10.0.0.14",
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
        "10.0.0.7",
        "10.0.0.11",
    ]
    assert len(list(pool.candidates(0))) == 9


def test_check_fixed():
    pool = _pool()
    assert pool.check_fixed("10.0.0.3") == ipaddress.IPv4Address("10.0.0.3")
    for bad, why in [
        ("10.0.0.15", "network or broadcast"),
        ("10.0.0.0", "network or broadcast"),
        ("10.0.0.2", "gateway's or the config node's"),
        ("10.0.0.9", "dynamic range"),
        ("10.0.1.3", "outside the cloud subnet"),
        ("10.0.0", "invalid IP address"),
    ]:
        with pytest.raises(InventoryError, match=why):
            pool.check_fixed(bad)
