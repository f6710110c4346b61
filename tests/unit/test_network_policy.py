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
        ("exa mple.com", "neither an IPv4 address or CIDR nor a domain name"),
        ("*.*.example.com", "nor a domain name (example.com) or wildcard (*.example.com)"),
        ("-bad.example.com", "nor a domain name"),
        ("example", "nor a domain name"),
        ("a." + "b" * 64 + ".com", "nor a domain name"),
        ("x.123", "nor a domain name"),
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


def test_domains_are_kept_in_lower_case_next_to_cidrs() -> None:
    policy = make_policy(True, ["API.Example.com.", "*.cdn.example", "10.0.0.0/8"], ["0.0.0.0/0"])
    assert policy.allow_out == ("api.example.com", "*.cdn.example", "10.0.0.0/8")
    assert policy.allow_domains == ("api.example.com", "*.cdn.example")
    assert policy.allow_cidrs == ("10.0.0.0/8",)
    assert policy.deny_cidrs == ("0.0.0.0/0",) and policy.deny_domains == ()
    assert policy.has_domains
    assert NetworkPolicy.from_dict(policy.to_dict()) == policy
    assert [str(n) for n in collapse(policy.allow_out)] == ["10.0.0.0/8"]
    # Without egress there is nothing for a domain rule to do.
    assert not make_policy(False, [], ["example.com"]).has_domains


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("api.example.com", True),
        ("API.example.com.", True),
        ("example.com", None),  # a wildcard does not cover its base name
        ("a.cdn.example", True),
        ("deep.a.cdn.example", True),
        ("cdn.example", None),
        ("xcdn.example", None),
        ("evil.example.com", False),
        ("other.org", None),
    ],
)
def test_names_match_exactly_or_below_a_wildcard(name: str, verdict: bool | None) -> None:
    policy = make_policy(True, ["api.example.com", "*.cdn.example"], ["*.example.com"])
    # allow wins: api.example.com is under the denied wildcard too.
    assert policy.name_verdict(name) is verdict
