"""Domain rules in egress policies, on the real runtime, HTTP and HTTPS.

"The internet" is the test's own namespace (``tests.support.fakenet``): its
DNS server knows the ``.test`` names of ``fakenet.NAMES``, its web hosts
answer with the name they were asked for (Host header, or TLS SNI) and the
address they were reached at, over HTTPS with a certificate of the test's own
CA, which the sandboxes are given to trust. ``shared.test`` is a second site
on ``web.test``'s address: the name checks must tell them apart.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.linux.driver import LinuxRuntime
from tests.contract.conftest import (
    TEMPLATES,
    Harness,
    host_traces,
    new_data_dir,
    sandbox_cgroup_dirs,
    template_seed,
)
from tests.support.fakenet import FETCH, OTHER, WEB, WILD, FakeInternet

pytestmark = pytest.mark.linux

CA = "/tmp/test-ca.pem"


@pytest.fixture(scope="module")
def internet() -> Iterator[FakeInternet]:
    if shutil.which("ip") is None or shutil.which("openssl") is None:
        pytest.skip("iproute2 and openssl are needed")
    net = FakeInternet().open()
    try:
        yield net
    finally:
        net.close()
        assert not net.leftovers()


@pytest.fixture(scope="module")
async def h(base_template: Path, internet: FakeInternet) -> AsyncIterator[Harness]:
    data_dir = new_data_dir("netdomains")
    rt = LinuxRuntime(data_dir, TEMPLATES, template_seed=template_seed(), network_dns=[WEB])
    await rt.start()
    harness = Harness(rt)
    try:
        yield harness
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        traces = host_traces(data_dir) + sandbox_cgroup_dirs(rt, harness.ids)
        if not traces:
            shutil.rmtree(data_dir, ignore_errors=True)
        assert not traces, f"left on the host: {traces}"


async def boxed(h: Harness, internet: FakeInternet, policy: NetworkPolicy) -> str:
    sid = await h.create(network=policy)
    ca = base64.b64encode(internet.ca_pem.encode()).decode()
    await h.out(sid, f"echo {ca} | base64 -d > {CA}")
    return sid


async def fetch_raw(h: Harness, sid: str, *targets: str) -> dict[str, str]:
    out = await h.out(sid, f"python3 -c '{FETCH}' {CA} {' '.join(targets)}")
    results: dict[str, str] = json.loads(out)
    return results


async def fetch(h: Harness, sid: str, *targets: str) -> dict[str, bool]:
    return {t: r.startswith("ok") for t, r in (await fetch_raw(h, sid, *targets)).items()}


async def test_allow_list_of_domains_http_https_wildcard(
    h: Harness, internet: FakeInternet
) -> None:
    sid = await boxed(h, internet, make_policy(True, ["web.test", "*.wild.test"], ["0.0.0.0/0"]))
    got = await fetch(
        h, sid,
        "http:web.test", "https:web.test", "https:api.wild.test", "https:deep.api.wild.test",
        # Not allowed: another name, a name on an allowed name's address, the
        # wildcard's own base name.
        "https:other.test", "http:shared.test", "https:shared.test", "http:wild.test",
        # An allowed name sent to an address it does not resolve to.
        f"https:web.test@{OTHER}",
    )  # fmt: skip
    assert got == {
        "http:web.test": True, "https:web.test": True,
        "https:api.wild.test": True, "https:deep.api.wild.test": True,
        "https:other.test": False, "http:shared.test": False, "https:shared.test": False,
        "http:wild.test": False, f"https:web.test@{OTHER}": False,
    }  # fmt: skip
    # Through the proxy, to the right host, which saw the name asked for.
    assert await fetch_raw(h, sid, "https:api.wild.test", "http:web.test") == {
        "https:api.wild.test": f"ok api.wild.test at {WILD}",
        "http:web.test": f"ok web.test at {WEB}",
    }
    # Other ports go by address: the ones allowed names resolved to.
    got = await fetch(h, sid, f"tcp:{WEB}", f"tcp:{WILD}", f"tcp:{OTHER}")
    assert got == {f"tcp:{WEB}": True, f"tcp:{WILD}": True, f"tcp:{OTHER}": False}
    await h.rt.destroy(sid)


async def test_denied_domains_only(h: Harness, internet: FakeInternet) -> None:
    sid = await boxed(h, internet, make_policy(True, [], ["shared.test", "*.wild.test"]))
    got = await fetch(
        h, sid, "https:web.test", "https:other.test", "https:shared.test", "http:shared.test",
        "https:api.wild.test",
    )  # fmt: skip
    assert got == {
        "https:web.test": True, "https:other.test": True,
        "https:shared.test": False, "http:shared.test": False, "https:api.wild.test": False,
    }  # fmt: skip
    # The wildcard's address, learnt from DNS, is closed on other ports too.
    assert await fetch(h, sid, f"tcp:{WILD}", f"tcp:{OTHER}") == {
        f"tcp:{WILD}": False, f"tcp:{OTHER}": True,
    }  # fmt: skip
    await h.rt.destroy(sid)


async def test_allow_wins_over_deny_for_names(h: Harness, internet: FakeInternet) -> None:
    sid = await boxed(h, internet, make_policy(True, ["deep.api.wild.test"], ["*.wild.test"]))
    got = await fetch(h, sid, "https:deep.api.wild.test", "https:api.wild.test")
    assert got == {"https:deep.api.wild.test": True, "https:api.wild.test": False}
    await h.rt.destroy(sid)


async def test_domain_policy_changed_while_running(h: Harness, internet: FakeInternet) -> None:
    rt = h.rt
    sid = await boxed(h, internet, make_policy(True, ["web.test"], ["0.0.0.0/0"]))
    assert await fetch(h, sid, "https:web.test", "https:other.test", f"tcp:{WEB}") == {
        "https:web.test": True, "https:other.test": False, f"tcp:{WEB}": True,
    }  # fmt: skip

    # Swap the allowed name: web.test's address (resolved before) closes at once.
    await rt.set_network_policy(sid, make_policy(True, ["other.test"], ["0.0.0.0/0"]))
    assert await fetch(h, sid, f"tcp:{WEB}") == {f"tcp:{WEB}": False}
    assert await fetch(h, sid, "https:web.test", "https:other.test", f"tcp:{OTHER}") == {
        "https:web.test": False, "https:other.test": True, f"tcp:{OTHER}": True,
    }  # fmt: skip

    # Addresses only again, then no internet, then domains again.
    await rt.set_network_policy(sid, make_policy(True, [WEB], ["0.0.0.0/0"]))
    assert await fetch(h, sid, "https:shared.test", "https:other.test") == {
        "https:shared.test": True, "https:other.test": False,
    }  # fmt: skip
    await rt.set_network_policy(sid, make_policy(False))
    assert await fetch(h, sid, f"https:web.test@{WEB}") == {f"https:web.test@{WEB}": False}
    await rt.set_network_policy(sid, make_policy(True, [], ["web.test"]))
    assert await fetch(h, sid, "https:web.test", "https:shared.test") == {
        "https:web.test": False, "https:shared.test": True,
    }  # fmt: skip
    await rt.destroy(sid)
    assert await rt.leftovers(sid) == []


async def test_no_internet_and_default_still_work(h: Harness, internet: FakeInternet) -> None:
    open_box = await boxed(h, internet, NetworkPolicy())
    closed = await boxed(h, internet, make_policy(False))
    assert await fetch(h, open_box, "https:web.test", "https:shared.test", f"tcp:{OTHER}") == {
        "https:web.test": True, "https:shared.test": True, f"tcp:{OTHER}": True,
    }  # fmt: skip
    assert await fetch(h, closed, "https:web.test", f"https:web.test@{WEB}") == {
        "https:web.test": False, f"https:web.test@{WEB}": False,
    }  # fmt: skip
    for sid in (open_box, closed):
        await h.rt.destroy(sid)


#: Inside: is there any IPv6 address, can a datagram go to the link's
#: all-nodes group or to a global IPv6 address?
IPV6 = r"""
import socket
found = open("/proc/net/if_inet6").read().strip()
print("addresses:", found or "none")
for target in (("ff02::1", 9, 0, 2), ("2001:db8::1", 9, 0, 0)):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.sendto(b"x", target)
        print("sent", target[0])
    except OSError as exc:
        print("refused", target[0], type(exc).__name__)
"""


async def test_no_ipv6_in_sandboxes(h: Harness, internet: FakeInternet) -> None:
    sid = await h.create()
    out = await h.out(sid, f"python3 -c '{IPV6}'")
    lines = out.splitlines()
    assert lines[0] == "addresses: none", out
    assert lines[1].startswith("refused ff02::1"), out
    assert lines[2].startswith("refused 2001:db8::1"), out
    await h.rt.destroy(sid)


async def test_domain_rules_survive_a_restart(base_template: Path, internet: FakeInternet) -> None:
    """The forwarder and proxy listen on new ports after a restart: the stored
    policy points the sandbox's redirects at them again."""
    data_dir = new_data_dir("netrestart")
    kw = {"template_seed": template_seed(), "network_dns": [WEB]}
    first = LinuxRuntime(data_dir, TEMPLATES, **kw)  # type: ignore[arg-type]
    await first.start()
    h1 = Harness(first)
    sid = await boxed(h1, internet, make_policy(True, ["web.test"], ["0.0.0.0/0"]))
    assert await fetch(h1, sid, "https:web.test", "https:shared.test") == {
        "https:web.test": True, "https:shared.test": False,
    }  # fmt: skip
    old_ports = first.network.domains.ports
    await first.close()

    second = LinuxRuntime(data_dir, TEMPLATES, **kw)  # type: ignore[arg-type]
    await second.start()
    try:
        assert await second.adopt(sid)
        assert second.network.domains.ports != old_ports
        h2 = Harness(second)
        assert await fetch(h2, sid, "https:web.test", "https:shared.test") == {
            "https:web.test": True, "https:shared.test": False,
        }  # fmt: skip
        await second.destroy(sid)
        assert await second.leftovers(sid) == []
    finally:
        for left in await second.running():
            await second.destroy(left)
        await second.close()
    traces = host_traces(data_dir) + sandbox_cgroup_dirs(second, {sid})
    assert not traces, f"left on the host: {traces}"
    shutil.rmtree(data_dir, ignore_errors=True)


#: Inside: one A query for argv[2] to argv[1] (host:port) over UDP, or TCP
#: if a third argument is given; prints the answer's address or "none".
QUERY = r"""
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
name = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0"
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\0\x01\0\x01"
try:
    if len(sys.argv) > 3:  # over TCP
        s = socket.create_connection((host, int(port)), timeout=1.5)
        s.sendall(len(query).to_bytes(2, "big") + query)
        reply = s.recv(2)
        reply = s.recv(int.from_bytes(reply, "big"))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.5)
        s.sendto(query, (host, int(port)))
        reply = s.recv(512)
    print(socket.inet_ntoa(reply[-4:]) if reply[7] else "none")
except OSError:
    print("none")
"""


async def test_every_query_goes_through_the_forwarder(h: Harness, internet: FakeInternet) -> None:
    """A resolver named by the sandbox itself is answered by the forwarder
    too (so the answer opens the address); the forwarder's own port is not
    reachable directly, from a sandbox with domain rules or without."""
    ports = h.rt.network.domains.ports
    assert ports is not None
    sid = await boxed(h, internet, make_policy(True, ["web.test"], ["0.0.0.0/0"]))
    plain = await h.create()
    att = await h.rt.network.address(sid)
    plain_att = await h.rt.network.address(plain)
    assert att is not None and plain_att is not None
    # OTHER runs a resolver too, but OTHER is closed in allow-list mode.
    assert await h.out(sid, f"python3 -c '{QUERY}' {OTHER}:53 web.test") == WEB
    assert await fetch(h, sid, f"tcp:{WEB}") == {f"tcp:{WEB}": True}
    # DNS over TCP is forwarded as well.
    assert await h.out(sid, f"python3 -c '{QUERY}' {att.gateway}:53 api.wild.test tcp") == WILD
    for box, gateway in ((sid, att.gateway), (plain, plain_att.gateway)):
        out = await h.out(box, f"python3 -c '{QUERY}' {gateway}:{ports.dns} web.test")
        assert out == "none"
    for sandbox in (sid, plain):
        await h.rt.destroy(sandbox)
