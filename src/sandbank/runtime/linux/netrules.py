"""The nftables rules of sandbox networking, as JSON commands (pure; no kernel).

One table, ``inet sandbank``, shared by every sandbank server on the host. Its
base chains are the same whatever a server's settings, so servers (and test
runs) side by side never fight over them; everything per sandbox hangs off
maps keyed by the sandbox's host-side interface name:

* ``ifaces``  every sandbox interface: the input chain drops what they send to
  the host itself, the forward chain drops anything opened *towards* them
  (so sandboxes cannot reach each other), what they send from a source
  address not their own, and what they send to ``blocked``;
* ``egress``  interface -> ``jump sb_<key>``, the sandbox's egress policy;
* ``dnsmap``  interface -> ``jump dns_<key>``, the DNAT of DNS queries sent to
  the sandbox's gateway to the resolver the server chose for it;

What leaves a sandbox interface is masqueraded behind the host's outgoing
address (``iifname`` is known in postrouting for forwarded packets).

A sandbox's policy chain, in order: always-blocked destinations are dropped
before it is consulted; DNS that its own DNAT rewrote is accepted; with
``allow_internet_access`` false everything else is dropped; then ``allow_out``
accepts, ``deny_out`` drops, and the rest (IPv4) is accepted. IPv6 is dropped:
sandboxes have IPv4 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbank.protocol.network import NetworkPolicy, collapse

Command = dict[str, Any]

FAMILY = "inet"
TABLE = "sandbank"

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


# -- expression helpers -------------------------------------------------------------


def _obj(**fields: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **fields}


def _match(left: Any, right: Any, op: str = "==") -> Command:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _daddr() -> dict[str, Any]:
    return {"payload": {"protocol": "ip", "field": "daddr"}}


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
    if resolver is not None and policy.allow_internet_access:
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
    # Only lists with entries have a set (and a rule): see ``add_sandbox``.
    if policy.allow_out:
        cmds.append(_rule(chain, _match(_daddr(), f"@{names.allow_set}"), _ACCEPT))
    if policy.deny_out:
        cmds.append(_rule(chain, _match(_daddr(), f"@{names.deny_set}"), _DROP))
    cmds.append(_rule(chain, _ACCEPT))
    return cmds


def _dns_rules(names: Names, policy: NetworkPolicy, resolver: str | None) -> list[Command]:
    if resolver is None or not policy.allow_internet_access:
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


def _add_set(name: str) -> Command:
    """Creates the set, or leaves an existing one as it is."""
    return {"add": {"set": _obj(name=name, type="ipv4_addr", flags=["interval"])}}


def _fill(names: Names, policy: NetworkPolicy, resolver: str | None) -> list[Command]:
    """Sets, set elements and chain rules of a policy (into flushed or new objects)."""
    cmds: list[Command] = []
    for name, entries in ((names.allow_set, policy.allow_out), (names.deny_set, policy.deny_out)):
        if entries:
            elem = _prefixes(entries)
            cmds.append(_add_set(name))
            cmds.append({"add": {"element": _obj(name=name, elem=elem)}})
    return cmds + _policy_rules(names, policy, resolver) + _dns_rules(names, policy, resolver)


def add_sandbox(names: Names, policy: NetworkPolicy, resolver: str | None) -> list[Command]:
    """Everything of one sandbox, added before its interface exists.

    The allow and deny sets exist only for lists with entries (most sandboxes
    have none): every named set in the table makes each later nft batch
    slower (nft and the kernel look sets up by name in a list), so two empty
    sets per sandbox made adding and removing one take 5x as long at 500
    sandboxes (35 vs 6 ms, 78 vs 7 ms)."""
    cmds: list[Command] = [
        {"add": {"chain": _obj(name=names.chain)}},
        {"add": {"chain": _obj(name=names.dns_chain)}},
    ]
    cmds += _fill(names, policy, resolver)
    for name, target in (("egress", names.chain), ("dnsmap", names.dns_chain)):
        elem = [[names.veth, {"jump": {"target": target}}]]
        cmds.append({"add": {"element": _obj(name=name, elem=elem)}})
    # Last: from here on the interface's packets are this sandbox's.
    cmds.append({"add": {"element": _obj(name="ifaces", elem=[names.veth])}})
    return cmds


def replace_policy(names: Names, policy: NetworkPolicy, resolver: str | None) -> list[Command]:
    """Swap a running sandbox's policy in one transaction: no packet sees a mix.
    The sets are made first if missing, so that both can be flushed."""
    cmds: list[Command] = [_add_set(names.allow_set), _add_set(names.deny_set)]
    cmds += [
        {"flush": {"set": _obj(name=names.allow_set)}},
        {"flush": {"set": _obj(name=names.deny_set)}},
        {"flush": {"chain": _obj(name=names.chain)}},
        {"flush": {"chain": _obj(name=names.dns_chain)}},
    ]
    return cmds + _fill(names, policy, resolver)


def remove_sandbox(names: Names) -> list[Command]:
    """Delete every object of one sandbox, in the order the kernel accepts: map
    elements before the chains they jump to, rules before their chains and
    before the sets they name. A set may not exist (see ``add_sandbox``): it
    is added first in the same transaction, so the delete cannot fail."""
    sets = (names.allow_set, names.deny_set)
    return [
        *(remove_element(names, m) for m in ("ifaces", "egress", "dnsmap")),
        *({"flush": {"chain": _obj(name=c)}} for c in (names.chain, names.dns_chain)),
        *({"delete": {"chain": _obj(name=c)}} for c in (names.chain, names.dns_chain)),
        *(_add_set(s) for s in sets),
        *({"delete": {"set": _obj(name=s)}} for s in sets),
    ]


def remove_element(names: Names, container: str) -> Command:
    return {"delete": {"element": _obj(name=container, elem=[names.veth])}}


def sandbox_objects(names: Names) -> list[tuple[str, dict[str, Any]]]:
    """(kind, identity) of each object ``add_sandbox`` makes, for leftover checks;
    the map entries are found by listing ``MAPS``."""
    return [
        ("chain", _obj(name=names.chain)),
        ("chain", _obj(name=names.dns_chain)),
        ("set", _obj(name=names.allow_set)),
        ("set", _obj(name=names.deny_set)),
    ]


#: The shared sets and maps that hold one entry per sandbox interface.
MAPS = (("set", "ifaces"), ("map", "egress"), ("map", "dnsmap"))


def element_keys(listing: list[Command], kind: str) -> set[str]:
    """Interface names in the ``list set``/``list map`` output of one of ``MAPS``."""
    keys: set[str] = set()
    for item in listing:
        body = item.get(kind)
        if not isinstance(body, dict):
            continue
        for elem in body.get("elem") or []:
            key = elem[0] if isinstance(elem, list) else elem
            if isinstance(key, str):
                keys.add(key)
    return keys
