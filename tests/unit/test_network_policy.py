"""The egress policy's checks and normalization (pure; no root)."""

from __future__ import annotations

import ipaddress

import pytest

from sandbank.protocol.network import (
    MAX_ENTRIES,
    NetworkPolicy,
    collapse,
    make_policy,
    normalize,
)


def test_entries_become_cidrs_without_duplicates() -> None:
    assert normalize("allow_out", ["1.2.3.4", " 10.0.0.0/8", "1.2.3.4/32"]) == (
        "1.2.3.4/32",
        "10.0.0.0/8",
    )


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("300.1.1.1", "not an IPv4 address or CIDR"),
        ("1.2.3.4/33", "not an IPv4 address or CIDR"),
        ("example.com", "domain names are not supported yet"),
        ("*.example.com", "domain names are not supported yet"),
        ("2001:db8::/32", "IPv6"),
        ("", "empty"),
    ],
)
def test_bad_entries_are_named(entry: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        make_policy(True, [], ["8.8.8.8", entry])
    assert says in str(err.value)
    assert "deny_out" in str(err.value)
    assert repr(entry) in str(err.value)


def test_entry_limit_counts_both_lists() -> None:
    allow = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(MAX_ENTRIES // 2)]
    deny = [str(ipaddress.IPv4Address(0x0B000000 + i)) for i in range(MAX_ENTRIES // 2)]
    assert len(make_policy(True, allow, deny).allow_out) == MAX_ENTRIES // 2
    with pytest.raises(ValueError, match=f"at most {MAX_ENTRIES}"):
        make_policy(True, allow, [*deny, "12.0.0.1"])


def test_allow_list_without_internet_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_out has no effect"):
        make_policy(False, ["1.1.1.1"])
    assert make_policy(False, [], ["1.1.1.1"]).deny_out == ("1.1.1.1/32",)


def test_round_trip_through_a_dict() -> None:
    policy = make_policy(True, ["1.1.1.1"], ["0.0.0.0/0"])
    assert NetworkPolicy.from_dict(policy.to_dict()) == policy
    assert NetworkPolicy.from_dict(None) == NetworkPolicy()
    assert NetworkPolicy.from_dict({"allow_internet_access": False}) == make_policy(False)


def test_collapse_merges_overlaps() -> None:
    nets = collapse(["10.0.0.0/8", "10.1.0.0/16", "10.0.0.1/32", "192.168.0.0/24"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.0.0/24"]
