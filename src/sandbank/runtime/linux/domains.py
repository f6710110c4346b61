"""What the sandbank resolver learned for each sandbox with domain rules.

A domain entry in a policy cannot be a kernel rule by itself: packets carry
addresses. So the sandboxes with domain rules resolve through the server
(``dnsforward``), and every A record it hands a sandbox for a name under an
``allow_out`` (or ``deny_out``) pattern is remembered here with its TTL and
put into the sandbox's nftables set ``dallow_<key>`` (``ddeny_<key>``) before
the answer leaves. The TLS/HTTP proxy (``sniproxy``) asks the same book
whether a connection's destination was resolved from an allowed name.

The book keeps *names* per address, not verdicts: a policy change
re-classifies what the sandbox already resolved, so cached answers follow the
new policy at once too.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.linux.netrules import BLOCKED, Names

#: Floor of an element's lifetime: a TTL of 0 must still let the sandbox
#: connect to the address it was just given.
MIN_TTL = 30
#: Ceiling, so a forged or careless day-long TTL does not pin an address.
MAX_TTL = 3600
#: Addresses remembered per sandbox; past it the oldest go (their set
#: elements time out on their own).
MAX_ADDRESSES = 4096
#: A set element is given this much more time than the answer's TTL left, so
#: the same answer asked again soon needs no nftables transaction.
HEADROOM = 1.25

_BLOCKED = [ipaddress.IPv4Network(b) for b in BLOCKED]


def element_ttl(ttl: int) -> int:
    return max(MIN_TTL, min(MAX_TTL, ttl))


@dataclass
class SandboxDomains:
    """One sandbox: its policy and what its queries resolved to."""

    sandbox_id: str
    names: Names
    address: str
    policy: NetworkPolicy
    #: address -> {name: expiry (monotonic)}
    resolved: dict[str, dict[str, float]] = field(default_factory=dict)
    #: (allowed?, address) -> expiry of its element in the kernel's sets
    kernel: dict[tuple[bool, str], float] = field(default_factory=dict)

    def learn(self, name: str, address: str, ttl: int) -> None:
        names = self.resolved.setdefault(address, {})
        names[name] = time.monotonic() + element_ttl(ttl)
        if len(self.resolved) > MAX_ADDRESSES:
            del self.resolved[next(iter(self.resolved))]

    def _live_names(self, address: str) -> dict[str, float]:
        now = time.monotonic()
        names = {n: t for n, t in self.resolved.get(address, {}).items() if t > now}
        if not names:
            self.resolved.pop(address, None)
        return names

    def address_verdict(self, address: str) -> bool | None:
        """The domain rules' say on an address by the names it was resolved
        from: True if any allowed name, else False if any denied one."""
        verdicts = {self.policy.name_verdict(n) for n in self._live_names(address)}
        if True in verdicts:
            return True
        if False in verdicts:
            return False
        return None

    def elements(self, only_stale: bool = False) -> tuple[dict[str, int], dict[str, int]]:
        """(allowed, denied) address -> seconds its set element must live;
        ``only_stale``: just those the kernel's sets do not cover yet."""
        allowed: dict[str, int] = {}
        denied: dict[str, int] = {}
        now = time.monotonic()
        for address in list(self.resolved):
            names = self._live_names(address)
            verdict = self.address_verdict(address)
            if verdict is None or not names:
                continue
            expiry = max(names.values())
            if only_stale and self.kernel.get((verdict, address), 0.0) >= expiry:
                continue
            (allowed if verdict else denied)[address] = int((expiry - now) * HEADROOM) + 1
        return allowed, denied

    def published(self, allowed: dict[str, int], denied: dict[str, int], whole: bool) -> None:
        """The kernel's sets now hold these elements (``whole``: only these)."""
        now = time.monotonic()
        if whole:
            self.kernel = {}
        for verdict, found in ((True, allowed), (False, denied)):
            for address, timeout in found.items():
                self.kernel[(verdict, address)] = now + timeout
        if len(self.kernel) > 2 * MAX_ADDRESSES:
            self.kernel = {k: t for k, t in self.kernel.items() if t > now}

    def connection_allowed(self, address: str, name: str | None) -> bool:
        """May the sandbox open a connection to ``address`` that names ``name``
        (TLS SNI or HTTP Host; None: it names none)?

        Allow wins over deny. An address in ``allow_out`` is allowed whatever
        the name. A name under ``allow_out`` is allowed only to an address the
        sandbox resolved from an allowed name: otherwise any address could be
        reached by sending an allowed name to it. A denied name is refused
        wherever it goes. A name the rules do not mention, or no name, falls to
        the address: its CIDR rules, then what it was resolved from (a name
        does not pick up the verdict of another name sharing its address).
        """
        ip = ipaddress.IPv4Address(address)
        if any(ip in net for net in _BLOCKED):
            return False
        policy = self.policy
        if not policy.allow_internet_access:
            return False
        if _in(ip, policy.allow_cidrs):
            return True
        by_name = policy.name_verdict(name) if name else None
        from_dns = self.address_verdict(address)
        if by_name is True and from_dns is True:
            return True
        if by_name is False:
            return False
        if name is None or by_name is True:
            if from_dns is True:
                return True
            if from_dns is False:
                return False
        return not _in(ip, policy.deny_cidrs)


def _in(ip: ipaddress.IPv4Address, cidrs: tuple[str, ...]) -> bool:
    return any(ip in ipaddress.IPv4Network(c) for c in cidrs)


class DomainBook:
    """Every sandbox with domain rules of one runtime, by its address."""

    def __init__(self) -> None:
        self._by_address: dict[str, SandboxDomains] = {}
        self._by_id: dict[str, SandboxDomains] = {}

    def put(
        self, sandbox_id: str, names: Names, address: str, policy: NetworkPolicy
    ) -> SandboxDomains:
        """Register or re-police a sandbox; what it resolved is kept."""
        entry = self._by_id.get(sandbox_id)
        if entry is None or entry.address != address:
            self.drop(sandbox_id)
            entry = SandboxDomains(sandbox_id, names, address, policy)
            self._by_id[sandbox_id] = entry
            self._by_address[address] = entry
        entry.policy = policy
        return entry

    def drop(self, sandbox_id: str) -> None:
        entry = self._by_id.pop(sandbox_id, None)
        if entry is not None and self._by_address.get(entry.address) is entry:
            del self._by_address[entry.address]

    def by_address(self, address: str) -> SandboxDomains | None:
        return self._by_address.get(address)

    def get(self, sandbox_id: str) -> SandboxDomains | None:
        return self._by_id.get(sandbox_id)

    def __len__(self) -> int:
        return len(self._by_id)
