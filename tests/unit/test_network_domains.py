"""Domain rules without a kernel: what a sandbox resolved, the verdict on a
connection, and reading the name out of TLS and HTTP."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import cast

import pytest
from dnslib import CNAME, QTYPE, RCODE, RR, A, DNSRecord

from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.linux import domains, netrules
from sandbank.runtime.linux.dnsforward import learn, refusal
from sandbank.runtime.linux.domainpolicy import DomainRules
from sandbank.runtime.linux.domains import DomainBook, SandboxDomains
from sandbank.runtime.linux.netrules import DomainPorts, Names
from sandbank.runtime.linux.nft import Nft
from sandbank.runtime.linux.sniproxy import NeedMore, http_host, requested_name

NAMES = Names("0123456789ab")
ALLOW_LIST = make_policy(True, ["web.test", "*.wild.test"], ["0.0.0.0/0"])


def entry(policy: NetworkPolicy = ALLOW_LIST) -> SandboxDomains:
    return SandboxDomains("sb1", NAMES, "10.231.0.2", policy)


def answer(name: str, *records: RR) -> bytes:
    reply = DNSRecord.question(name).reply()
    for rr in records:
        reply.add_answer(rr)
    return bytes(reply.pack())


def test_answers_for_policy_names_are_learnt_with_their_ttl() -> None:
    e = entry()
    assert learn(e, answer("web.test", RR("web.test", QTYPE.A, rdata=A("198.51.100.10"), ttl=300)))
    # Through a CNAME: the name asked for decides.
    assert learn(
        e,
        answer(
            "api.wild.test",
            RR("api.wild.test", QTYPE.CNAME, rdata=CNAME("edge.cdn.test"), ttl=60),
            RR("edge.cdn.test", QTYPE.A, rdata=A("198.51.100.20"), ttl=5),
        ),
    )
    # A name the policy does not mention is not remembered.
    assert not learn(e, answer("other.test", RR("other.test", QTYPE.A, rdata=A("203.0.113.10"))))
    allowed, denied = e.elements()
    assert set(allowed) == {"198.51.100.10", "198.51.100.20"} and denied == {}
    # The TTL and some headroom, so that asking again soon costs nothing.
    assert 300 <= allowed["198.51.100.10"] <= 300 * domains.HEADROOM + 1
    # A short TTL still leaves time to connect.
    assert allowed["198.51.100.20"] >= domains.MIN_TTL
    # Once in the kernel, the same answers are not stale; a longer one is.
    e.published(allowed, denied, whole=True)
    assert e.elements(only_stale=True) == ({}, {})
    e.learn("web.test", "198.51.100.10", 60)
    assert e.elements(only_stale=True) == ({}, {})
    e.learn("web.test", "198.51.100.10", 3000)
    assert set(e.elements(only_stale=True)[0]) == {"198.51.100.10"}


def test_garbage_is_not_learnt_and_strangers_are_refused() -> None:
    assert not learn(entry(), b"\x00\x01junk")
    query = DNSRecord.question("web.test")
    reply = DNSRecord.parse(refusal(bytes(query.pack())) or b"")
    assert reply.header.rcode == RCODE.REFUSED and reply.header.id == query.header.id


def test_connection_verdicts_in_allow_list_mode() -> None:
    e = entry()
    e.learn("web.test", "198.51.100.10", 60)
    assert e.connection_allowed("198.51.100.10", "web.test")
    # Same address, another name: the name decides.
    assert not e.connection_allowed("198.51.100.10", "shared.test")
    # An allowed name to an address it was not resolved to.
    assert not e.connection_allowed("203.0.113.10", "web.test")
    # No name (not TLS or HTTP): the address, by what it was resolved from.
    assert e.connection_allowed("198.51.100.10", None)
    assert not e.connection_allowed("203.0.113.10", None)
    # Never the metadata service, whatever it was resolved from.
    e.learn("web.test", "169.254.169.254", 60)
    assert not e.connection_allowed("169.254.169.254", "web.test")


def test_connection_verdicts_with_denied_names() -> None:
    e = entry(make_policy(True, ["9.9.9.9"], ["evil.test"]))
    e.learn("evil.test", "198.51.100.10", 60)
    assert not e.connection_allowed("198.51.100.10", "evil.test")
    assert not e.connection_allowed("198.51.100.10", None)
    assert e.connection_allowed("198.51.100.10", "good.test")  # shares the address
    assert e.connection_allowed("9.9.9.9", "evil.test")  # allow wins


def test_a_policy_change_reclassifies_what_was_resolved() -> None:
    book = DomainBook()
    e = book.put("sb1", NAMES, "10.231.0.2", ALLOW_LIST)
    e.learn("web.test", "198.51.100.10", 60)
    assert "198.51.100.10" in e.elements()[0]
    e = book.put("sb1", NAMES, "10.231.0.2", make_policy(True, [], ["web.test"]))
    allowed, denied = e.elements()
    assert allowed == {} and "198.51.100.10" in denied
    assert book.by_address("10.231.0.2") is e
    book.drop("sb1")
    assert book.by_address("10.231.0.2") is None and len(book) == 0


def _client_hello(name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    if name is None:
        ctx.check_hostname = False
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_from_a_real_client_hello() -> None:
    hello = _client_hello("API.Wild.test")
    assert requested_name(hello) == "api.wild.test"
    with pytest.raises(NeedMore):
        requested_name(hello[:40])
    assert requested_name(_client_hello(None)) is None


def test_host_from_an_http_request_head() -> None:
    assert http_host(b"GET / HTTP/1.1\r\nHost: Web.test:8080\r\nAccept: */*\r\n\r\n") == "web.test"
    assert http_host(b"GET / HTTP/1.0\r\n\r\n") is None
    assert requested_name(b"SSH-2.0-OpenSSH\r\n") is None
    with pytest.raises(NeedMore):
        http_host(b"POST /x HTTP/1.1\r\nHo")
    with pytest.raises(NeedMore):
        http_host(b"GE")


def test_rules_of_a_domain_policy() -> None:
    text = str(netrules.add_sandbox(NAMES, ALLOW_LIST, "192.0.2.53", DomainPorts(5300, 8443)))
    # DNS to any resolver goes to the forwarder; 80/443 to the proxy; no DNAT upstream.
    assert "'redirect': {'port': 5300}" in text and "'redirect': {'port': 8443}" in text
    assert "192.0.2.53" not in text
    assert NAMES.resolved_allow_set in text and "'timeout'" in text
    with pytest.raises(ValueError, match="forwarder"):
        netrules.add_sandbox(NAMES, ALLOW_LIST, "192.0.2.53", None)
    # Input lets in redirected traffic only to the ports servers listed.
    (accept,) = [
        c for c in netrules.base_table() if "rule" in c.get("add", {}) and "dnat" in str(c)
    ]
    assert "@hostports" in str(accept) and "input" in str(accept)
    assert netrules.host_ports(DomainPorts(5300, 8443), add=False)[0]["delete"]["element"][
        "elem"
    ] == [5300, 8443]
    refresh = netrules.refresh_resolved(NAMES, {"198.51.100.10": 60}, {})
    assert refresh[-1]["add"]["element"]["elem"] == [
        {"elem": {"val": "198.51.100.10", "timeout": 60}}
    ]


def test_stored_policies_and_rollback(tmp_path: Path) -> None:
    rules = DomainRules(cast(Nft, None), tmp_path, ["10.231.0.0/16"])
    rules.register("sb1", NAMES, "10.231.0.2", ALLOW_LIST)
    assert rules.stored() == {"sb1": ALLOW_LIST}
    before = rules.book.get("sb1")
    # A change to a policy without domains that the kernel then refused.
    rules.forget("sb1")
    assert rules.stored() == {} and rules.leftovers("sb1") == []
    rules.rollback("sb1", before, ALLOW_LIST)
    assert rules.stored() == {"sb1": ALLOW_LIST}
    entry = rules.book.by_address("10.231.0.2")
    assert entry is not None and entry.policy == ALLOW_LIST
    assert rules.leftovers("sb1")  # the resolver entry and the stored policy
    rules.rollback("sb1", None, None)
    assert rules.leftovers("sb1") == []
