"""A sandbox's egress policy as the API defines it, and the checks of its entries.

Semantics (E2B's, with one difference spelled out):

* ``allow_internet_access`` false: no egress at all, the sandbank resolver
  included. E2B treats it as ``deny_out: ["0.0.0.0/0"]`` that ``allow_out``
  can still open; here an ``allow_out`` next to it is refused instead of being
  silently honoured or ignored: allow-list mode is spelled
  ``deny_out: ["0.0.0.0/0"]`` plus ``allow_out``.
* otherwise everything is allowed except ``deny_out``, and ``allow_out`` wins
  over ``deny_out`` where both match.
* entries are IPv4 addresses or CIDRs (sandboxes have no IPv6); domain names
  are refused until a DNS-driven set exists.

Pure and stdlib only: the API validates with it, the runtime turns a policy
into firewall rules, both see the same normalized entries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Entries a policy may hold, ``allow_out`` and ``deny_out`` together: each
#: becomes an interval in a kernel set, and a policy is replaced as a whole.
MAX_ENTRIES = 1000

ALL_TRAFFIC = "0.0.0.0/0"

_DOMAIN = re.compile(r"^(\*\.)?([A-Za-z0-9_-]{1,63}\.)*[A-Za-z][A-Za-z0-9-]{0,62}\.?$")


@dataclass(frozen=True)
class NetworkPolicy:
    """Checked and normalized: every entry is an IPv4 network in CIDR form."""

    allow_internet_access: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow_internet_access": self.allow_internet_access,
            "allow_out": list(self.allow_out),
            "deny_out": list(self.deny_out),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> NetworkPolicy:
        """From a stored (already checked) dict; missing keys take the defaults."""
        if not data:
            return cls()
        return make_policy(
            bool(data.get("allow_internet_access", True)),
            data.get("allow_out") or (),
            data.get("deny_out") or (),
        )


def parse_entry(field: str, entry: str) -> ipaddress.IPv4Network:
    """One ``allow_out``/``deny_out`` entry; ValueError naming it when it is not
    an IPv4 address or CIDR."""
    text = entry.strip() if isinstance(entry, str) else entry
    if not isinstance(text, str) or not text:
        raise ValueError(f"{field}: entry {entry!r} is empty or not a string")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(
                f"{field}: entry {entry!r} has host bits set (did you mean {loose}?)"
            ) from None
        if _DOMAIN.match(text) and not text.replace(".", "").isdigit():
            raise ValueError(
                f"{field}: entry {entry!r} is a domain name; domain names are not "
                "supported yet, give IPv4 addresses or CIDRs"
            ) from None
        raise ValueError(f"{field}: entry {entry!r} is not an IPv4 address or CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(
            f"{field}: entry {entry!r} is IPv6; sandboxes have IPv4 only, give IPv4 entries"
        )
    return net


def normalize(field: str, entries: Iterable[str]) -> tuple[str, ...]:
    """Entries checked one by one, in CIDR form, duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for entry in entries:
        seen[str(parse_entry(field, entry))] = None
    return tuple(seen)


def make_policy(
    allow_internet_access: bool = True,
    allow_out: Iterable[str] = (),
    deny_out: Iterable[str] = (),
) -> NetworkPolicy:
    """A checked policy; ValueError saying which entry or combination is wrong."""
    allow = normalize("allow_out", allow_out)
    deny = normalize("deny_out", deny_out)
    total = len(allow) + len(deny)
    if total > MAX_ENTRIES:
        raise ValueError(
            f"network policy has {total} entries; at most {MAX_ENTRIES} "
            "(allow_out and deny_out together)"
        )
    if not allow_internet_access and allow:
        raise ValueError(
            "allow_out has no effect when allow_internet_access is false (no egress at "
            f'all); for an allow list give deny_out ["{ALL_TRAFFIC}"] with allow_out'
        )
    return NetworkPolicy(allow_internet_access, allow, deny)


def collapse(entries: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """The fewest networks covering ``entries``: a kernel interval set refuses overlaps."""
    nets = [ipaddress.IPv4Network(e) for e in entries]
    return list(ipaddress.collapse_addresses(nets))
