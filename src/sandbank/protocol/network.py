"""A sandbox's egress policy as the API defines it, and the checks of its entries.

Semantics (E2B's, with one difference spelled out):

* ``allow_internet_access`` false: no egress at all, the sandbank resolver
  included. E2B treats it as ``deny_out: ["0.0.0.0/0"]`` that ``allow_out``
  can still open; here an ``allow_out`` next to it is refused instead of being
  silently honoured or ignored: allow-list mode is spelled
  ``deny_out: ["0.0.0.0/0"]`` plus ``allow_out``.
* otherwise everything is allowed except ``deny_out``, and ``allow_out`` wins
  over ``deny_out`` where both match.
* entries are IPv4 addresses, CIDRs (sandboxes have no IPv6), domain names
  (``example.com``: that name only) or wildcards (``*.example.com``: every
  name below it, not ``example.com`` itself), in both lists. A domain entry
  covers the addresses the sandbox resolves that name to, and (for HTTP and
  TLS on ports 80 and 443) connections that name it in their Host header or
  TLS SNI; see docs/networking.md for how and for the limits.

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

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
#: A name of two labels or more, or ``*.`` and one or more; the last label not numeric.
_DOMAIN = re.compile(
    rf"^(?:\*\.(?:{_LABEL}\.)*|(?:{_LABEL}\.)+)(?!-)[a-z][a-z0-9-]{{0,62}}(?<!-)$"
)
_MAX_NAME = 253


@dataclass(frozen=True)
class NetworkPolicy:
    """Checked and normalized: every entry is an IPv4 network in CIDR form or a
    lower-case domain pattern without a trailing dot."""

    allow_internet_access: bool = True
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow_internet_access": self.allow_internet_access,
            "allow_out": list(self.allow_out),
            "deny_out": list(self.deny_out),
        }

    @property
    def allow_cidrs(self) -> tuple[str, ...]:
        return tuple(e for e in self.allow_out if not is_domain(e))

    @property
    def deny_cidrs(self) -> tuple[str, ...]:
        return tuple(e for e in self.deny_out if not is_domain(e))

    @property
    def allow_domains(self) -> tuple[str, ...]:
        return tuple(e for e in self.allow_out if is_domain(e))

    @property
    def deny_domains(self) -> tuple[str, ...]:
        return tuple(e for e in self.deny_out if is_domain(e))

    @property
    def has_domains(self) -> bool:
        """Domain rules need the sandbank resolver and proxy (and egress at all)."""
        return self.allow_internet_access and bool(self.allow_domains or self.deny_domains)

    def name_verdict(self, name: str) -> bool | None:
        """True when ``name`` matches ``allow_out``, else False when it matches
        ``deny_out`` (allow wins), None when no domain entry matches it."""
        name = name.rstrip(".").lower()
        if any(domain_matches(p, name) for p in self.allow_domains):
            return True
        if any(domain_matches(p, name) for p in self.deny_domains):
            return False
        return None

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


def is_domain(entry: str) -> bool:
    """Of a normalized entry: a domain pattern (CIDRs always hold a slash)."""
    return "/" not in entry


def domain_matches(pattern: str, name: str) -> bool:
    """``name`` (lower case, no trailing dot) under the normalized ``pattern``."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def parse_domain(field: str, entry: str, text: str) -> str:
    """A domain pattern in normal form; ValueError naming the entry."""
    name = text.lower().rstrip(".") if text != "." else text
    if len(name) > _MAX_NAME or not _DOMAIN.match(name):
        raise ValueError(
            f"{field}: entry {entry!r} is neither an IPv4 address or CIDR nor a domain "
            "name (example.com) or wildcard (*.example.com)"
        )
    return name


def parse_entry(field: str, entry: str) -> ipaddress.IPv4Network:
    """One ``allow_out``/``deny_out`` address entry; ValueError naming it when
    it is not an IPv4 address or CIDR."""
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
        raise ValueError(f"{field}: entry {entry!r} is not an IPv4 address or CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(
            f"{field}: entry {entry!r} is IPv6; sandboxes have IPv4 only, give IPv4 entries"
        )
    return net


def normalize(field: str, entries: Iterable[str]) -> tuple[str, ...]:
    """Entries checked one by one, addresses in CIDR form, domains in lower
    case, duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for entry in entries:
        text = entry.strip() if isinstance(entry, str) else entry
        if isinstance(text, str) and _looks_like_name(text):
            seen[parse_domain(field, entry, text)] = None
        else:
            seen[str(parse_entry(field, entry))] = None
    return tuple(seen)


def _looks_like_name(text: str) -> bool:
    """Not an address attempt: a letter or ``*`` in it and no ``/`` or ``:``."""
    return "/" not in text and ":" not in text and any(c.isalpha() or c == "*" for c in text)


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
    nets = [ipaddress.IPv4Network(e) for e in entries if not is_domain(e)]
    return list(ipaddress.collapse_addresses(nets))
