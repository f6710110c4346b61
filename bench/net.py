"""What sandbox networking costs: the network phase of a create, and the
preview proxy against talking to the sandbox's own address.

1. Create. Against the driver directly (no server): cold creates alternating
   with and without the network phase (a bench-only runtime that skips
   attaching the network), with the driver's own timing of that phase. On a
   real server: cold creates (networking is always on there), and creates
   served by a warm pool of 4 (the bench waits for the refill between
   creates, as tti.py does), where the network was made before the request.
2. Preview proxy. ``python3 -m http.server 8000`` inside a sandbox; small
   GETs through the proxy (path form and Host form) and straight to the
   sandbox's address from the host; then a 64 MiB download each way. A
   download that ends early is counted ("cut short") and tried again, up to
   four tries per run wanted: through the proxy some do (see ``download``).
3. Domain rules. Against the driver, with the tests' fake internet as "the
   internet" (``tests.support.fakenet``: its resolver and web hosts): from
   inside a sandbox with the default policy and one with a domain allow list,
   DNS queries (straight to the fake resolver by DNAT, or through the
   forwarder, which also updates the nftables sets) and new HTTP and HTTPS
   connections with one GET each (forwarded, or through the name-checking
   proxy). ``--only domains`` runs this part alone.

    .venv/bin/python bench/net.py [-n 30] [--gets 200] [--runs 3] [--only domains]

Traffic goes to the loopback (the server), to the bench's own sandboxes
(their addresses in the sandbox network) and to the fake internet's own
namespace only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import time
from pathlib import Path

import httpx
from _common import (
    BENCH_ROOT,
    TEMPLATES,
    ServerProcess,
    metric,
    pct,
    running_server,
    summary,
)

from sandbank import Sandbox
from sandbank.protocol.network import NetworkPolicy, make_policy
from sandbank.runtime.base import ExecSpec, SandboxSpec
from sandbank.runtime.linux import network
from sandbank.runtime.linux.driver import LinuxRuntime

POOL_SIZE = 4
PORT = 8000
BIG_MIB = 64
CHUNK = 1 << 20


# -- 1. create -----------------------------------------------------------------------------


class SwitchableRuntime(LinuxRuntime):
    """The driver, with the network phase switched off for the creates that ask."""

    networked = True

    async def _attach_network(self, spec, box):  # type: ignore[no-untyped-def]
        if self.networked:
            await super()._attach_network(spec, box)


def spec(sid: str) -> SandboxSpec:
    return SandboxSpec(
        id=sid, template="base", vcpu=1, memory_mb=512, disk_gb=1, hostname=f"b-{sid[:6]}"
    )


async def driver_creates(n: int, warmup: int) -> dict[str, list[float]]:
    """Cold creates on the driver, alternating with and without the network."""
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o711)
    data_dir = BENCH_ROOT / f"net-driver-{os.getpid()}"
    rt = SwitchableRuntime(data_dir, TEMPLATES)
    await rt.start()
    out: dict[str, list[float]] = {"with": [], "without": [], "network phase": []}
    true = ExecSpec(cmd=["true"])
    try:
        await rt.ensure_template("base")
        for i in range(2 * (warmup + n)):
            await asyncio.sleep(0.05)  # the disk pool refills, as under a server
            rt.networked = i % 2 == 0
            sid = "nt" + secrets.token_hex(6)
            t0 = time.perf_counter()
            await rt.create(spec(sid))
            t1 = time.perf_counter()
            await rt.channel(sid).exec(true)
            marks = dict(rt.timings.get(sid, {}))
            await rt.destroy(sid)
            if i < 2 * warmup:
                continue
            out["with" if rt.networked else "without"].append(t1 - t0)
            if rt.networked:
                out["network phase"].append(marks["network"])
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def wait_for_pool(srv: ServerProcess, size: int = POOL_SIZE, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(srv, "sandbank_pool_size", template="base") < size:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not refill to {size} within {timeout} s")
        time.sleep(0.01)


def server_creates(srv: ServerProcess, n: int, *, pooled: bool) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        sbx = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        samples.append(time.perf_counter() - t0)
        try:
            sbx.commands.run("true", check=True)
            if pooled:
                wait_for_pool(srv)  # before the kill: the next create finds a full pool
        finally:
            sbx.kill()
    return samples


# -- 2. preview proxy -----------------------------------------------------------------------


def sandbox_address(srv: ServerProcess, sbx: Sandbox) -> str:
    """The sandbox side of its /30, read back from its host-side link as the
    runtime does; checked to lie in the sandbox network."""
    nets = network.SandboxNetworks(str(Path(srv.data_dir).absolute()))
    att = asyncio.run(nets.address(sbx.sandbox_id))
    if att is None:
        raise SystemExit(f"no network link found for {sbx.sandbox_id}")
    if ipaddress.IPv4Address(att.address) not in ipaddress.IPv4Network(network.DEFAULT_CIDR):
        raise SystemExit(f"{att.address} is outside the sandbox network")
    return att.address


def start_http_server(sbx: Sandbox) -> None:
    setup = (
        "mkdir -p /home/user/www && cd /home/user/www && printf ok > small.txt && "
        f"head -c {BIG_MIB * CHUNK} /dev/urandom > big.bin && "
        f"nohup setsid python3 -m http.server {PORT} >/dev/null 2>&1 </dev/null & "
        "for i in $(seq 50); do python3 -c 'import socket; "
        f'socket.create_connection(("127.0.0.1", {PORT}), 0.2)\' 2>/dev/null && exit 0; '
        "sleep 0.1; done; exit 1"
    )
    sbx.commands.run(setup, check=True, timeout=120)


def small_gets(client: httpx.Client, url: str, n: int, headers: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.get(url, headers=headers)
        samples.append(time.perf_counter() - t0)
        if resp.status_code != 200 or resp.content != b"ok":
            raise SystemExit(f"GET {url}: {resp.status_code} {resp.text[:200]}")
    return samples


def download(client: httpx.Client, url: str, headers: dict[str, str]) -> float | None:
    """MiB/s for the big file, body read to the end; None when it came short.

    Through the proxy some do: it sends a body-less GET upstream with
    ``Transfer-Encoding: chunked`` (an empty body), which http.server never
    reads; closing with unread input makes its kernel reset the connection,
    and the end of the response still in flight is lost."""
    got = 0
    t0 = time.perf_counter()
    try:
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code != 200:
                raise SystemExit(f"GET {url}: {resp.status_code}")
            for chunk in resp.iter_raw(CHUNK):
                got += len(chunk)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return None
    elapsed = time.perf_counter() - t0
    return got / CHUNK / elapsed if got == BIG_MIB * CHUNK else None


def downloads(
    client: httpx.Client, url: str, headers: dict[str, str], runs: int
) -> tuple[list[float], int]:
    """``runs`` complete downloads, in at most ``4 * runs`` tries; and how many came short."""
    rates: list[float] = []
    short = 0
    for _ in range(4 * runs):
        rate = download(client, url, headers)
        if rate is None:
            short += 1
        else:
            rates.append(rate)
        if len(rates) == runs:
            break
    return rates, short


def preview(srv: ServerProcess, gets: int, runs: int) -> None:
    sbx = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
    try:
        start_http_server(sbx)
        address = sandbox_address(srv, sbx)
        with srv.client() as api:
            info = api.get(f"/v1/sandboxes/{sbx.sandbox_id}/preview").json()
        token = {"X-Sandbank-Token": info["token"]}
        by_path = f"{srv.url}/v1/sandboxes/{sbx.sandbox_id}/ports/{PORT}"
        host = {**token, "Host": f"{PORT}-{sbx.sandbox_id}.localhost:{srv.port}"}
        direct = f"http://{address}:{PORT}"
        with httpx.Client(timeout=60) as client:
            # One of each first: connections, imports, the server's first request.
            small_gets(client, f"{by_path}/small.txt", 5, token)
            small_gets(client, f"{srv.url}/small.txt", 5, host)
            small_gets(client, f"{direct}/small.txt", 5, {})
            lat = {
                "direct (host -> sandbox address)": small_gets(
                    client, f"{direct}/small.txt", gets, {}
                ),
                "proxy, path form": small_gets(client, f"{by_path}/small.txt", gets, token),
                "proxy, Host form": small_gets(client, f"{srv.url}/small.txt", gets, host),
            }
            thr = {
                "direct": downloads(client, f"{direct}/big.bin", {}, runs),
                "proxy, path form": downloads(client, f"{by_path}/big.bin", token, runs),
                "proxy, Host form": downloads(client, f"{srv.url}/big.bin", host, runs),
            }
    except Exception:
        # The server's log goes with its data dir: show its end before it does.
        print(srv.log_path.read_text()[-4000:])
        raise
    finally:
        sbx.kill()

    print(f"\npreview proxy: python3 -m http.server {PORT} in a sandbox at {address}")
    print(f"small GETs ({gets} each, 2-byte body, one client with keep-alive to the server):")
    for name, samples in lat.items():
        print(summary(f"  {name}", samples))
    base = pct(lat["direct (host -> sandbox address)"], 50)
    for name in ("proxy, path form", "proxy, Host form"):
        added = (pct(lat[name], 50) - base) * 1000
        print(f"  added by the {name[7:]} at p50: {added:+.2f} ms")
    print(f"download of {BIG_MIB} MiB ({runs} complete runs each, at most {4 * runs} tries):")
    for name, (rates, short) in thr.items():
        shown = ", ".join(f"{r:.0f}" for r in rates)
        median = f"{statistics.median(rates):7.0f} MiB/s" if rates else "      - MiB/s"
        print(f"  {name:<20} median {median}  ({shown}); cut short: {short}")
    direct_rates = thr["direct"][0]
    for name in ("proxy, path form", "proxy, Host form"):
        rates = thr[name][0]
        if rates and direct_rates:
            ratio = statistics.median(rates) / statistics.median(direct_rates)
            print(f"  ratio ({name} / direct, medians): {ratio:.2f}")


# -- 3. domain rules -----------------------------------------------------------------------

#: Inside a sandbox: argv[1] rounds of (a DNS query for web.test to the
#: resolver in resolv.conf, an HTTP GET and an HTTPS GET on new connections
#: to web.test's address); prints the seconds of each as JSON.
TIMED = r"""
import json, random, socket, ssl, sys, time
n, ca, web = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resolver = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
ctx = ssl.create_default_context(cafile=ca)
out = {"dns": [], "http": [], "https": []}
def get(tls):
    s = socket.create_connection((web, 443 if tls else 80), timeout=5)
    if tls:
        s = ctx.wrap_socket(s, server_hostname="web.test")
    s.sendall(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
    while s.recv(4096):
        pass
    s.close()
for _ in range(n):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    qid = random.randrange(65536).to_bytes(2, "big")
    t0 = time.perf_counter()
    u.sendto(qid + b"\1\0\0\1\0\0\0\0\0\0\3web\4test\0\0\1\0\1", (resolver, 53))
    while u.recv(512)[:2] != qid:
        pass
    out["dns"].append(time.perf_counter() - t0)
    u.close()
    for kind, tls in (("http", False), ("https", True)):
        t0 = time.perf_counter()
        get(tls)
        out[kind].append(time.perf_counter() - t0)
print(json.dumps(out))
"""


async def domain_rules(n: int) -> dict[str, dict[str, list[float]]]:
    """The TIMED rounds in a default sandbox and in a domain allow-list one."""
    from tests.support import fakenet  # the bench's own "internet"

    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o711)
    data_dir = BENCH_ROOT / f"net-domains-{os.getpid()}"
    internet = fakenet.FakeInternet().open()
    rt = LinuxRuntime(data_dir, TEMPLATES, network_dns=[fakenet.WEB])
    out: dict[str, dict[str, list[float]]] = {}
    try:
        await rt.start()
        await rt.ensure_template("base")
        ca = base64.b64encode(internet.ca_pem.encode()).decode()
        policies = {
            "default policy (DNAT, forwarded)": NetworkPolicy(),
            "domain allow list (forwarder, proxy)": make_policy(
                True, ["web.test"], ["0.0.0.0/0"]
            ),
        }
        for name, policy in policies.items():
            sid = "nd" + secrets.token_hex(6)
            await rt.create(dataclasses.replace(spec(sid), network=policy))
            script = f"echo {ca} | base64 -d > /tmp/ca.pem && python3 -c '{TIMED}' "
            # A short warm-up round first (caches, the proxy's first connection).
            for rounds in (3, n):
                argv = ["sh", "-c", f"{script} {rounds} /tmp/ca.pem {fakenet.WEB}"]
                result = await rt.channel(sid).exec(ExecSpec(cmd=argv, user="user"))
                if result.exit_code != 0:
                    raise SystemExit(f"{name}: {result.stderr.decode()[-2000:]}")
            out[name] = json.loads(result.stdout)
            await rt.destroy(sid)
    finally:
        for sid in await rt.running():
            await rt.destroy(sid)
        await rt.close()
        internet.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def print_domain_rules(n: int) -> None:
    found = asyncio.run(domain_rules(n))
    print(f"\ndomain rules: {n} rounds in each sandbox, fake internet in a namespace")
    base_name, dom_name = list(found)
    for kind, label in (
        ("dns", "DNS query (UDP, A web.test)"),
        ("http", "HTTP GET, new connection"),
        ("https", "HTTPS GET, new connection (handshake)"),
    ):
        print(f"  {label}:")
        for name in found:
            print(summary(f"    {name}", found[name][kind]))
        added = (pct(found[dom_name][kind], 50) - pct(found[base_name][kind], 50)) * 1000
        print(f"    added by the domain rules at p50: {added:+.2f} ms")


# -- main ----------------------------------------------------------------------------------


def main(n: int, warmup: int, gets: int, runs: int, only: str | None) -> None:
    if only == "domains":
        print_domain_rules(n)
        return
    drv = asyncio.run(driver_creates(n, warmup))
    print(
        f"driver, cold create (until the agent answers); {n} each, alternating,"
        f" {os.cpu_count()} CPUs"
    )
    print(summary("  create with network", drv["with"]))
    print(summary("  create without network (bench-only)", drv["without"]))
    print(summary("  network phase (driver timing mark)", drv["network phase"]))
    added = (pct(drv["with"], 50) - pct(drv["without"], 50)) * 1000
    print(f"  create p50 grows by {added:+.2f} ms; the phase overlaps the agent's start")

    with running_server("net-pool", SANDBANK_POOL_SIZE=str(POOL_SIZE)) as srv:
        wait_for_pool(srv)
        Sandbox.create(base_url=srv.url, api_key=srv.api_key).kill()
        wait_for_pool(srv)
        pooled = server_creates(srv, n, pooled=True)
        hits = metric(srv, "sandbank_pool_hits_total", template="base")
    with running_server("net") as srv:
        Sandbox.create(base_url=srv.url, api_key=srv.api_key).kill()
        cold = server_creates(srv, n, pooled=False)
        print(f"\nserver, SDK Sandbox.create() (networking on, the default); {n} each")
        print(summary("  cold (no pool)", cold))
        print(summary(f"  warm pool of {POOL_SIZE}, refilled", pooled))
        print(f"  pool hits: {int(hits)} of {n + 1} creates (incl. one warm-up)")
        print(f"  ratio (cold p50 / pooled p50): {pct(cold, 50) / pct(pooled, 50):.1f}x")
        preview(srv, gets, runs)
    print_domain_rules(n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["domains"])
    args = parser.parse_args()
    main(args.n, args.warmup, args.gets, args.runs, args.only)
