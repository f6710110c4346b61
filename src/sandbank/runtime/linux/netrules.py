"""The nftables rules of sandbox networking, as JSON commands (pure; no kernel).

One table, ``inet sandbank2``, shared by every sandbank server on the host. Its
base chains are the same whatever a server's settings, so servers (and test
runs) side by side never fight over them; the name carries the revision of
those chains, so servers of another revision on the same host (an upgrade
under way, test runs of other versions) keep a table of their own instead of
flushing this one's rules; everything per sandbox hangs off
maps keyed by the sandbox's host-side interface name:

* ``ifaces``  every sandbox interface: the input chain drops what they send to
  the host itself, the forward chain drops anything opened *towards* them
  (so sandboxes cannot reach each other), what they send from a source
  address not their own, and what they send to ``blocked``;
* ``egress``  interface -> ``jump sb_<key>``, the sandbox's egress policy;
* ``dnsmap``  interface -> ``jump dns_<key>``, the DNAT of DNS queries sent to
  the sandbox's gateway to the resolver the server chose for it; for a
  sandbox whose policy names domains instead: every DNS query redirected to
  the server's forwarder, and TCP to ports 80 and 443 to its name-checking
  proxy (see ``dnsforward`` and ``sniproxy``), which the input chain lets in
  (``ct status dnat`` to a port in ``hostports``, where each server lists
  the ports of its own forwarder and proxy while it runs);

What leaves a sandbox interface is masqueraded behind the host's outgoing
address (``iifname`` is known in postrouting for forwarded packets).

A sandbox's policy chain, in order: always-blocked destinations are dropped
before it is consulted; DNS that its own DNAT rewrote is accepted; with
``allow_internet_access`` false everything else is dropped; then ``allow_out``
accepts (its addresses, then ``dallow_<key>``: what its domains resolved to),
``deny_out`` drops (addresses, then ``ddeny_<key>``), and the rest (IPv4) is
accepted. The two resolved-address sets have per-element timeouts (the DNS
TTL). IPv6 is dropped: sandboxes have IPv4 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbank.protocol.network import NetworkPolicy, collapse

Command = dict[str, Any]

FAMILY = "inet"
#: Revision 2: the input chain lets in the redirects of domain rules.
TABLE = "sandbank2"

#: Never reachable from a sandbox, whatever its policy says: link-local (cloud
#: metadata services live at 169.254.169.254), "this network", loopback,
#: multicast and the reserved/broadcast block.
BLOCKED = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")

DNS_PORT = 53


@dataclass(frozen=True)
class Names:
    """The kernel names of one sandbox's network objects, from a 12-hex-digit key."""

    key: str

    @property
    def veth(self) -> str:
        # IFNAMSIZ: 15 characters at most.
        return f"sbk{self.key}"

    @property
    def chain(self) -> str:
        return f"sb_{self.key}"

    @property
    def dns_chain(self) -> str:
        return f"dns_{self.key}"

    @property
    def allow_set(self) -> str:
        return f"allow_{self.key}"

    @property
    def deny_set(self) -> str:
        return f"deny_{self.key}"

    @property
    def resolved_allow_set(self) -> str:
        return f"dallow_{self.key}"

    @property
    def resolved_deny_set(self) -> str:
        return f"ddeny_{self.key}"

    @property
    def sets(self) -> tuple[str, ...]:
        return (self.allow_set, self.deny_set, self.resolved_allow_set, self.resolved_deny_set)


@dataclass(frozen=True)
class DomainPorts:
    """Host ports of the server's DNS forwarder and name-checking proxy."""

    dns: int
    proxy: int


#: Redirected to the name-checking proxy for a sandbox with domain rules.
PROXIED_PORTS = (80, 443)


# -- expression helpers -------------------------------------------------------------


def _obj(**fields: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **fields}


def _match(left: Any, right: Any, op: str = "==") -> Command:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _daddr() -> dict[str, Any]:
    return {"payload": {"protocol": "ip", "field": "daddr"}}


def _dport(proto: str = "th") -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": "dport"}}


_IIF = _meta("iifname")
_OIF = _meta("oifname")
_ACCEPT: Command = {"accept": None}
_DROP: Command = {"drop": None}
_ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
#: ``fib saddr . iif oif``: the interface the source address routes back through.
_RPF = {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}


def _rule(chain: str, *expr: Command) -> Command:
    return {"add": {"rule": _obj(chain=chain, expr=list(expr))}}


def _prefixes(entries: list[str] | tuple[str, ...]) -> list[Any]:
    out: list[Any] = []
    for net in collapse(entries):
        if net.prefixlen == 32:
            out.append(str(net.network_address))
        else:
            out.append({"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return out


# -- the table ------------------------------------------------------------------------


def base_table() -> list[Command]:
    """Create (or restore) the table and its base chains; idempotent and atomic.

    Sets, maps and per-sandbox chains are only added if missing (``add`` keeps
    what exists); the base chains are flushed and refilled in the same
    transaction, so there is no moment without their rules.
    """
    hooks = [
        ("input", "filter", "input", 0),
        ("forward", "filter", "forward", 0),
        ("prerouting", "nat", "prerouting", -100),
        ("postrouting", "nat", "postrouting", 100),
    ]
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds += [
        {"add": {"set": _obj(name="ifaces", type="ifname")}},
        {"add": {"map": _obj(name="egress", type="ifname", map="verdict")}},
        {"add": {"map": _obj(name="dnsmap", type="ifname", map="verdict")}},
        {"add": {"set": _obj(name="hostports", type="inet_service")}},
        {
            "add": {
                "set": _obj(
                    name="blocked", type="ipv4_addr", flags=["interval"], elem=_prefixes(BLOCKED)
                )
            }
        },
    ]
    for name, kind, hook, prio in hooks:
        chain = _obj(name=name, type=kind, hook=hook, prio=prio, policy="accept")
        cmds.append({"add": {"chain": chain}})
        cmds.append({"flush": {"chain": _obj(name=name)}})
    in_sandbox = _match(_IIF, "@ifaces")
    to_sandbox = _match(_OIF, "@ifaces")
    cmds += [
        # To the host itself: only replies to what the host opened (preview proxying).
        _rule("input", in_sandbox, _ESTABLISHED, _ACCEPT),
        # The DNS forwarder and the proxy know a sandbox by its source address.
        _rule("input", in_sandbox, _match(_RPF, False), _DROP),
        # The sandbox's own redirects to a forwarder or proxy (not whatever
        # else a host NAT rule might redirect to a local service).
        _rule(
            "input",
            in_sandbox,
            _match({"ct": {"key": "status"}}, "dnat", op="in"),
            _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
            _match(_dport(), "@hostports"),
            _ACCEPT,
        ),
        _rule("input", in_sandbox, _DROP),
        # Into a sandbox: only replies; nobody, another sandbox included, opens one.
        _rule("forward", to_sandbox, _ESTABLISHED, _ACCEPT),
        _rule("forward", to_sandbox, _DROP),
        # A source address not routed back to the sending link is spoofed: the
        # replies to it would be delivered to another sandbox.
        _rule("forward", in_sandbox, _match(_RPF, False), _DROP),
        _rule("forward", in_sandbox, _ESTABLISHED, _ACCEPT),
        _rule("forward", in_sandbox, _match(_daddr(), "@blocked"), _DROP),
        _rule("forward", in_sandbox, {"vmap": {"key": _IIF, "data": "@egress"}}),
        # A sandbox interface without a policy chain (mid-setup or -teardown): nothing.
        _rule("forward", in_sandbox, _DROP),
        _rule("prerouting", {"vmap": {"key": _IIF, "data": "@dnsmap"}}),
        _rule("postrouting", in_sandbox, {"masquerade": None}),
    ]
    return cmds


def _policy_rules(names: Names, policy: NetworkPolicy, resolver: str | None) -> list[Command]:
    chain = names.chain
    cmds: list[Command] = [
        _rule(chain, _match(_meta("nfproto"), "ipv4", op="!="), _DROP),
    ]
    if policy.has_domains:
        # QUIC carries its name encrypted: drop it, clients fall back to TCP 443.
        cmds.append(_rule(chain, _match(_dport("udp"), 443), _DROP))
    elif resolver is not None and policy.allow_internet_access:
        cmds.append(
            _rule(
                chain,
                _match({"ct": {"key": "status"}}, "dnat", op="in"),
                _match(_daddr(), resolver),
                _match({"payload": {"protocol": "th", "field": "dport"}}, DNS_PORT),
                _ACCEPT,
            )
        )
    if not policy.allow_internet_access:
        cmds.append(_rule(chain, _DROP))
        return cmds
    cmds += [
        _rule(chain, _match(_daddr(), f"@{names.allow_set}"), _ACCEPT),
        _rule(chain, _match(_daddr(), f"@{names.resolved_allow_set}"), _ACCEPT),
        _rule(chain, _match(_daddr(), f"@{names.deny_set}"), _DROP),
        _rule(chain, _match(_daddr(), f"@{names.resolved_deny_set}"), _DROP),
        _rule(chain, _ACCEPT),
    ]
    return cmds


def _dns_rules(
    names: Names, policy: NetworkPolicy, resolver: str | None, ports: DomainPorts | None
) -> list[Command]:
    if not policy.allow_internet_access:
        return []
    if policy.has_domains:
        if ports is None:
            raise ValueError("a policy with domain rules needs the DNS forwarder and proxy")
        chain = names.dns_chain
        return [
            # Every query, whichever resolver it names: names resolve through the book.
            _rule(
                chain,
                _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
                _match(_dport(), DNS_PORT),
                {"redirect": {"port": ports.dns}},
            ),
            _rule(
                chain,
                _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local", op="!="),
                _match(_dport("tcp"), {"set": list(PROXIED_PORTS)}),
                {"redirect": {"port": ports.proxy}},
            ),
        ]
    if resolver is None:
        return []
    return [
        _rule(
            names.dns_chain,
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
            _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
            _match({"payload": {"protocol": "th", "field": "dport"}}, DNS_PORT),
            {"dnat": {"family": "ip", "addr": resolver, "port": DNS_PORT}},
        )
    ]


#: Addresses resolved from policy domains -> seconds they stay.
Resolved = dict[str, int]


def resolved_elements(names: Names, allowed: Resolved, denied: Resolved) -> list[Command]:
    """Fill the (flushed or new) resolved-address sets."""
    cmds: list[Command] = []
    for name, found in ((names.resolved_allow_set, allowed), (names.resolved_deny_set, denied)):
        if found:
            elem = [{"elem": {"val": a, "timeout": t}} for a, t in sorted(found.items())]
            cmds.append({"add": {"element": _obj(name=name, elem=elem)}})
    return cmds


def add_resolved(names: Names, allowed: Resolved, denied: Resolved) -> list[Command]:
    """Add elements, or give existing ones the new timeout (recent kernels
    update an element's timeout when it is added again); removes nothing, so
    the kernel waits for no RCU grace period (a flush costs ~10 ms)."""
    return resolved_elements(names, allowed, denied)


def refresh_resolved(names: Names, allowed: Resolved, denied: Resolved) -> list[Command]:
    """Replace the resolved-address sets in one transaction (a re-added
    element would keep its old timeout; a flush and fill takes the new one)."""
    return [
        {"flush": {"set": _obj(name=names.resolved_allow_set)}},
        {"flush": {"set": _obj(name=names.resolved_deny_set)}},
        *resolved_elements(names, allowed, denied),
    ]


def _fill(
    names: Names, policy: NetworkPolicy, resolver: str | None, ports: DomainPorts | None
) -> list[Command]:
    """Set elements and chain rules of a policy (into flushed or new objects)."""
    cmds: list[Command] = []
    for name, entries in (
        (names.allow_set, policy.allow_cidrs),
        (names.deny_set, policy.deny_cidrs),
    ):
        if entries:
            elem = _prefixes(entries)
            cmds.append({"add": {"element": _obj(name=name, elem=elem)}})
    return (
        cmds + _policy_rules(names, policy, resolver) + _dns_rules(names, policy, resolver, ports)
    )


def add_sandbox(
    names: Names,
    policy: NetworkPolicy,
    resolver: str | None,
    ports: DomainPorts | None = None,
    label: str | None = None,
) -> list[Command]:
    """Everything of one sandbox, added before its interface exists; ``label``
    (its link's alias) is the comment of its ``ifaces`` element, so a leftover
    can be told whose it is."""
    cmds: list[Command] = [
        {"add": {"chain": _obj(name=names.chain)}},
        {"add": {"chain": _obj(name=names.dns_chain)}},
    ]
    for name in (names.allow_set, names.deny_set):
        cmds.append({"add": {"set": _obj(name=name, type="ipv4_addr", flags=["interval"])}})
    for name in (names.resolved_allow_set, names.resolved_deny_set):
        cmds.append({"add": {"set": _obj(name=name, type="ipv4_addr", flags=["timeout"])}})
    cmds += _fill(names, policy, resolver, ports)
    for name, target in (("egress", names.chain), ("dnsmap", names.dns_chain)):
        elem = [[names.veth, {"jump": {"target": target}}]]
        cmds.append({"add": {"element": _obj(name=name, elem=elem)}})
    # Last: from here on the interface's packets are this sandbox's.
    member: Any = names.veth
    if label is not None:
        member = {"elem": {"val": names.veth, "comment": label}}
    cmds.append({"add": {"element": _obj(name="ifaces", elem=[member])}})
    return cmds


def replace_policy(
    names: Names,
    policy: NetworkPolicy,
    resolver: str | None,
    ports: DomainPorts | None = None,
    resolved: tuple[Resolved, Resolved] = ({}, {}),
) -> list[Command]:
    """Swap a running sandbox's policy in one transaction: no packet sees a
    mix. ``resolved``: what its domains resolve to under the new policy."""
    cmds: list[Command] = [
        *({"flush": {"set": _obj(name=s)}} for s in names.sets),
        {"flush": {"chain": _obj(name=names.chain)}},
        {"flush": {"chain": _obj(name=names.dns_chain)}},
    ]
    return cmds + resolved_elements(names, *resolved) + _fill(names, policy, resolver, ports)


def remove_sandbox(names: Names) -> list[Command]:
    """Delete every object of one sandbox, in the order the kernel accepts: map
    elements before the chains they jump to, rules before their chains and
    before the sets they name."""
    return [
        *(remove_element(names, m) for m in ("ifaces", "egress", "dnsmap")),
        *({"flush": {"chain": _obj(name=c)}} for c in (names.chain, names.dns_chain)),
        *({"delete": {"chain": _obj(name=c)}} for c in (names.chain, names.dns_chain)),
        *({"delete": {"set": _obj(name=s)}} for s in names.sets),
    ]


def host_ports(ports: DomainPorts, add: bool) -> list[Command]:
    """List (or unlist) a server's forwarder and proxy ports in ``hostports``."""
    elem = _obj(name="hostports", elem=[ports.dns, ports.proxy])
    return [{"add" if add else "delete": {"element": elem}}]


def remove_element(names: Names, container: str) -> Command:
    return {"delete": {"element": _obj(name=container, elem=[names.veth])}}


def sandbox_objects(names: Names) -> list[tuple[str, dict[str, Any]]]:
    """(kind, identity) of each object ``add_sandbox`` makes, for leftover checks;
    the map entries are found by listing ``MAPS``."""
    return [
        ("chain", _obj(name=names.chain)),
        ("chain", _obj(name=names.dns_chain)),
        *(("set", _obj(name=s)) for s in names.sets),
    ]


#: The shared sets and maps that hold one entry per sandbox interface.
MAPS = (("set", "ifaces"), ("map", "egress"), ("map", "dnsmap"))
