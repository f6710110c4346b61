"""Sandbox networking on the real runtime: addresses, NAT, egress policy, isolation.

No packet goes to a real external address: "the internet" is a namespace of
the test's own (``tests.support.fakenet``), routed from the host like an
uplink would be, and the runtime's resolver is the fake DNS server there.
Sandboxes are shared by the checks that only read; a policy change gets a
sandbox of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.linux.driver import LinuxRuntime
from sandbank.runtime.linux.netrules import FAMILY, TABLE
from tests.contract.conftest import (
    TEMPLATES,
    Harness,
    host_traces,
    new_data_dir,
    sandbox_cgroup_dirs,
    template_seed,
)
from tests.support import fakenet
from tests.support.fakenet import METADATA, OTHER, PORT, WEB, WEB_NET, FakeInternet

pytestmark = pytest.mark.linux

#: Run inside a sandbox: try every "host:port" given, all at once; print
#: {target: "ok <banner>" | "fail <error>"}.
PROBE = r"""
import json, socket, sys, threading
out = {}
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=float(sys.argv[1])) as s:
            s.settimeout(float(sys.argv[1]))
            out[target] = "ok " + s.recv(100).decode(errors="replace").strip()
    except OSError as exc:
        out[target] = "fail " + type(exc).__name__
threads = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[2:]]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""

RESOLVE = r"""
import socket, sys
socket.setdefaulttimeout(2)
try:
    print("ok", socket.gethostbyname(sys.argv[1]))
except OSError as exc:
    print("fail", type(exc).__name__)
"""

WEB_T = f"{WEB}:{PORT}"
OTHER_T = f"{OTHER}:{PORT}"
META_T = f"{METADATA}:{PORT}"


async def probe(h: Harness, sid: str, *targets: str, timeout: float = 1.5) -> dict[str, str]:
    argv = " ".join(targets)
    out = await h.out(sid, f"python3 -c '{PROBE}' {timeout} {argv}")
    result: dict[str, str] = json.loads(out)
    return result


def ok(results: dict[str, str], target: str) -> bool:
    return results[target].startswith("ok")


@pytest.fixture(scope="module")
def internet() -> Iterator[FakeInternet]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    net = FakeInternet().open()
    try:
        yield net
    finally:
        net.close()
        assert not net.leftovers()


@pytest.fixture(scope="module")
async def net_harness(base_template: Path, internet: FakeInternet) -> AsyncIterator[Harness]:
    data_dir = new_data_dir("network")
    rt = LinuxRuntime(data_dir, TEMPLATES, template_seed=template_seed(), network_dns=[fakenet.WEB])
    await rt.start()
    h = Harness(rt)
    try:
        yield h
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        traces = host_traces(data_dir) + sandbox_cgroup_dirs(rt, h.ids)
        if not traces:
            shutil.rmtree(data_dir, ignore_errors=True)
        assert not traces, f"left on the host: {traces}"


@pytest.fixture(scope="module")
async def open_box(net_harness: Harness) -> str:
    return await net_harness.create()


@pytest.fixture(scope="module")
async def closed_box(net_harness: Harness) -> str:
    return await net_harness.create(network=make_policy(allow_internet_access=False))


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A TCP service on every host address: sandboxes must not reach it."""
    srv = socket.create_server(("0.0.0.0", 0))
    port: int = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"host service\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    srv.close()


def host_address() -> str:
    """The host's address on its default route (not a sandbox gateway)."""
    out = subprocess.run(["ip", "-j", "route", "get", "192.0.2.123"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return str(json.loads(out)[0]["prefsrc"])


async def test_sandbox_gets_address_route_and_resolver(net_harness: Harness, open_box: str) -> None:
    att = await net_harness.rt.network.address(open_box)
    assert att is not None
    inside = await net_harness.out(open_box, "cat /etc/resolv.conf; cat /proc/net/route")
    assert f"nameserver {att.gateway}" in inside
    # The default route (destination 00000000) through eth0.
    assert any(line.startswith("eth0\t00000000") for line in inside.splitlines())
    addr = await net_harness.out(
        open_box, f"python3 -c 'import socket; s=socket.socket(2,2); s.connect((\"{WEB}\",9)); "
        "print(s.getsockname()[0])'",
    )  # fmt: skip
    assert addr == att.address


async def test_internet_reachable_by_default(net_harness: Harness, open_box: str) -> None:
    results = await probe(net_harness, open_box, WEB_T, OTHER_T)
    # Masqueraded: the far end sees the host, answers from its own address.
    assert results[WEB_T] == f"ok hello from {WEB}", results
    assert results[OTHER_T] == f"ok hello from {OTHER}", results


async def test_dns_goes_through_the_host(net_harness: Harness, open_box: str) -> None:
    out = await net_harness.out(open_box, f"python3 -c '{RESOLVE}' anything.example")
    assert out == f"ok {fakenet.DNS_ANSWER}"


async def test_no_internet_means_no_egress_at_all(net_harness: Harness, closed_box: str) -> None:
    results = await probe(net_harness, closed_box, WEB_T, OTHER_T)
    assert not ok(results, WEB_T) and not ok(results, OTHER_T), results
    out = await net_harness.out(closed_box, f"python3 -c '{RESOLVE}' anything.example")
    assert out.startswith("fail"), out


async def test_link_local_and_host_are_blocked_whatever_the_policy(
    net_harness: Harness, open_box: str, host_listener: int
) -> None:
    att = await net_harness.rt.network.address(open_box)
    assert att is not None
    gw_t, host_t = f"{att.gateway}:{host_listener}", f"{host_address()}:{host_listener}"
    await net_harness.rt.set_network_policy(open_box, make_policy(True, [METADATA, "0.0.0.0/0"]))
    try:
        results = await probe(net_harness, open_box, META_T, gw_t, host_t, WEB_T)
    finally:
        await net_harness.rt.set_network_policy(open_box, NetworkPolicy())
    assert ok(results, WEB_T), results
    for target in (META_T, gw_t, host_t):
        assert not ok(results, target), results


async def test_sandboxes_cannot_reach_each_other(net_harness: Harness, open_box: str) -> None:
    other = await net_harness.create()
    await net_harness.out(
        other,
        "setsid python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null & "
        "for i in $(seq 50); do python3 -c 'import socket; socket.create_connection("
        '("127.0.0.1", 8000), 0.2)\' 2>/dev/null && break; sleep 0.1; done',
    )
    att = await net_harness.rt.network.address(other)
    assert att is not None
    results = await probe(net_harness, open_box, f"{att.address}:8000")
    assert not ok(results, f"{att.address}:8000"), results
    # It listens: the host reaches it.
    with socket.create_connection((att.address, 8000), timeout=2):
        pass
    await net_harness.rt.destroy(other)


#: As root inside: send a DNS query to the fake internet's resolver from
#: argv[1] (an address not ours) through a raw socket.
SPOOF = r"""
import socket, struct, sys
src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04spoo\x00\x00\x01\x00\x01"
udp = struct.pack("!HHHH", 5353, 53, 8 + len(query), 0) + query
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ip + udp, (sys.argv[2], 0))
"""

#: Wait up to argv[1] seconds for one datagram on UDP 5353; print "got" or "none".
LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
s.settimeout(float(sys.argv[1]))
if len(sys.argv) > 2:
    s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x02ok\x00\x00\x01\x00\x01",
             (sys.argv[2], 53))
try:
    s.recvfrom(512)
    print("got")
except OSError:
    print("none")
"""


async def test_spoofed_sources_are_dropped(net_harness: Harness, open_box: str) -> None:
    """A sandbox cannot send as another: the replies would reach the other one."""
    victim = await net_harness.create()
    victim_att = await net_harness.rt.network.address(victim)
    assert victim_att is not None
    # The path works for the victim's own query.
    own = await net_harness.out(victim, f"python3 -c '{LISTEN}' 3 {WEB}")
    assert own == "got"
    listening = asyncio.ensure_future(net_harness.out(victim, f"python3 -c '{LISTEN}' 3"))
    await asyncio.sleep(0.5)
    await net_harness.out(open_box, f"python3 -c '{SPOOF}' {victim_att.address} {WEB}", user="root")
    assert await listening == "none"
    await net_harness.rt.destroy(victim)


async def test_policy_at_create_and_changed_while_running(net_harness: Harness) -> None:
    allow_list = make_policy(True, [WEB], ["0.0.0.0/0"])
    sid = await net_harness.create(network=allow_list)
    rt = net_harness.rt
    results = await probe(net_harness, sid, WEB_T, OTHER_T)
    assert ok(results, WEB_T) and not ok(results, OTHER_T), results

    # Deny a range; allow wins over deny for the one address also allowed.
    await rt.set_network_policy(sid, make_policy(True, [WEB], [WEB_NET, OTHER]))
    results = await probe(net_harness, sid, WEB_T, OTHER_T)
    assert ok(results, WEB_T) and not ok(results, OTHER_T), results

    await rt.set_network_policy(sid, make_policy(True, [], [WEB_NET]))
    results = await probe(net_harness, sid, WEB_T, OTHER_T)
    assert not ok(results, WEB_T) and ok(results, OTHER_T), results

    await rt.set_network_policy(sid, make_policy(False))
    results = await probe(net_harness, sid, WEB_T, OTHER_T)
    assert not ok(results, WEB_T) and not ok(results, OTHER_T), results

    await rt.set_network_policy(sid, NetworkPolicy())
    results = await probe(net_harness, sid, WEB_T, OTHER_T)
    assert ok(results, WEB_T) and ok(results, OTHER_T), results
    await rt.destroy(sid)


async def test_destroy_leaves_no_network_behind(net_harness: Harness) -> None:
    rt = net_harness.rt
    costs = []
    for _ in range(3):
        sid = await net_harness.create()
        costs.append(rt.timings[sid]["network"])
        names = rt.network.names(sid)
        assert await rt.network.leftovers(sid)  # there is something to remove
        await rt.destroy(sid)
        assert await rt.leftovers(sid) == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert names.veth not in links
        table = subprocess.run(
            ["nft", "list", "table", FAMILY, TABLE], capture_output=True, text=True
        ).stdout
        assert names.key not in table
    print(f"network set-up per create: median {statistics.median(costs) * 1000:.1f} ms")


async def test_killed_sandbox_network_is_removed(net_harness: Harness) -> None:
    """The container dying on its own takes the link with it; the rules stay
    until destroy, which then removes them."""
    rt = net_harness.rt
    sid = await net_harness.create()
    agent = await rt.ocicli.init_process(sid)
    assert agent is not None
    await rt.ocicli.kill_all(sid)
    await rt.destroy(sid)
    assert await rt.leftovers(sid) == []
