"""The nftables batches of sandbox networking: their shape (pure), and, as
root, that the kernel takes them, inside a network namespace of the test's
own so the host's firewall is never touched."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbank.errors import RuntimeFailure
from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.linux import netrules
from sandbank.runtime.linux.netrules import Names
from sandbank.runtime.linux.network import SandboxNetworks, pick_slot, slot_addresses
from sandbank.runtime.linux.resolv import upstream_resolvers

NAMES = Names("0123456789ab")


def _rules(cmds: list[netrules.Command], chain: str) -> list[list[dict[str, object]]]:
    return [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})
            and c["add"]["rule"]["chain"] == chain]  # fmt: skip


def test_names_fit_the_kernel_limits() -> None:
    assert len(NAMES.veth) <= 15
    assert NAMES.chain == "sb_0123456789ab"


def test_no_internet_drops_everything_and_has_no_dns() -> None:
    cmds = netrules.add_sandbox(NAMES, make_policy(False), "192.0.2.53")
    chain = _rules(cmds, NAMES.chain)
    assert chain[-1] == [{"drop": None}]
    assert not any("accept" in str(rule) for rule in chain)
    assert _rules(cmds, NAMES.dns_chain) == []


def test_allow_is_checked_before_deny() -> None:
    cmds = netrules.add_sandbox(NAMES, make_policy(True, ["1.1.1.1"], ["0.0.0.0/0"]), None)
    chain = [str(r) for r in _rules(cmds, NAMES.chain)]
    allow = next(i for i, r in enumerate(chain) if NAMES.allow_set in r)
    deny = next(i for i, r in enumerate(chain) if NAMES.deny_set in r)
    assert allow < deny


def test_overlapping_entries_are_merged_for_the_interval_set() -> None:
    policy = make_policy(True, [], ["10.0.0.0/8", "10.1.2.3", "10.2.0.0/16"])
    cmds = netrules.replace_policy(NAMES, policy, None)
    elements = [c["add"]["element"] for c in cmds if "element" in c.get("add", {})]
    assert elements == [
        {
            **elements[0],
            "name": NAMES.deny_set,
            "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}],
        }
    ]


def test_slots_and_addresses() -> None:
    cidr = ipaddress.IPv4Network("10.231.0.0/16")
    att = slot_addresses(cidr, 3)
    assert (att.gateway, att.address) == ("10.231.0.13", "10.231.0.14")
    assert pick_slot({5, 6}, 8, 5) == 7
    assert pick_slot({6, 7}, 8, 6) == 0
    assert pick_slot(set(range(4)), 4, 0) is None


def test_resolvers_skip_loopback_stubs(tmp_path: Path) -> None:
    stub, real = tmp_path / "stub", tmp_path / "real"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    real.write_text("# upstream\nnameserver 192.0.2.53\nnameserver 2001:db8::1\n")
    assert upstream_resolvers([stub, real]) == ["192.0.2.53"]
    assert upstream_resolvers([tmp_path / "missing"]) == []


APPLY = """
import socket
from sandbank.errors import RuntimeFailure
from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.linux import netrules
from sandbank.runtime.linux.netrules import Names
from sandbank.runtime.linux.domainpolicy import DomainRules
from sandbank.runtime.linux.nft import Nft, element_keys

for nft in (Nft(), Nft(prefer_library=False)):
    names = Names("0123456789ab")
    nft.run_sync(netrules.base_table())
    nft.run_sync(netrules.base_table())  # idempotent
    nft.run_sync(netrules.add_sandbox(names, make_policy(True, ["1.1.1.1"], ["0.0.0.0/0"]),
                                      "192.0.2.53"))
    nft.run_sync(netrules.replace_policy(names, make_policy(False), "192.0.2.53"))
    nft.run_sync(netrules.replace_policy(names, NetworkPolicy(), None))
    # Domain rules: redirects, timeout sets, a labelled member, listed ports.
    ports = netrules.DomainPorts(5300, 8443)
    domains = make_policy(True, ["web.test"], ["0.0.0.0/0", "*.bad.test"])
    other = Names("ba9876543210")
    nft.run_sync(netrules.add_sandbox(other, domains, "192.0.2.53", ports, "sandbank:x:y"))
    nft.run_sync(netrules.host_ports(ports, add=True))
    nft.run_sync(netrules.add_resolved(other, {"198.51.100.10": 60}, {"203.0.113.9": 30}))
    nft.run_sync(netrules.refresh_resolved(other, {"198.51.100.11": 60}, {}))
    nft.run_sync(netrules.replace_policy(other, domains, None, ports, ({"1.2.3.4": 9}, {})))
    resolved_set = other.resolved_allow_set
    listing = nft.list_sync("set", family="inet", table=netrules.TABLE, name=resolved_set)
    assert "1.2.3.4" in str(listing) and "198.51.100.11" not in str(listing), listing
    nft.run_sync(netrules.replace_policy(other, NetworkPolicy(), "192.0.2.53", ports))
    nft.run_sync(netrules.host_ports(ports, add=False))
    nft.run_sync(netrules.remove_sandbox(other))
    # Ports nobody listens on (a server that died) are unlisted at start.
    live = socket.create_server(("0.0.0.0", 0))
    port = live.getsockname()[1]
    nft.run_sync(netrules.host_ports(netrules.DomainPorts(port, 1), add=True))
    DomainRules(nft, None, [])._prune_host_ports()
    listing = nft.list_sync("set", family="inet", table=netrules.TABLE, name="hostports")
    assert [e for i in listing for e in i.get("set", {}).get("elem", [])] == [port], listing
    live.close()
    listing = nft.list_sync("map", family="inet", table=netrules.TABLE, name="egress")
    assert names.veth in element_keys(listing, "map"), listing
    nft.run_sync(netrules.remove_sandbox(names))
    for kind, ident in netrules.sandbox_objects(names):
        assert nft.list_sync(kind, **ident) is None, (kind, ident)
    listing = nft.list_sync("set", family="inet", table=netrules.TABLE, name="ifaces")
    assert names.veth not in element_keys(listing, "set")
    nft.run_sync([{"delete": {"table": {"family": "inet", "name": netrules.TABLE}}}])
print("applied")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_the_kernel_takes_the_batches() -> None:
    """Through libnftables and through the nft binary, in a throwaway netns."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nftables is not installed")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", APPLY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "applied"


def test_default_policy_allows_internet() -> None:
    assert NetworkPolicy().allow_internet_access


def test_bad_network_settings_are_named() -> None:
    for cidr, dns in (("10.231.0.0/31", ()), ("10.300.0.0/16", ()), ("10.0.0.0/16", ["x"])):
        with pytest.raises(RuntimeFailure):
            SandboxNetworks("/data", cidr, dns)
    assert SandboxNetworks("/data", "10.0.0.0/24").slots == 64
