"""A network for each sandbox: a routed veth pair, NAT out, and an egress policy.

Topology. The sandbox's network namespace is the one the OCI runtime creates,
owned by the sandbox's user namespace: sysfs can only be mounted at /sys by a
process whose user namespace owns its network namespace, so a namespace made
on the host and handed to runc by path would make the /sys mount fail. The
driver therefore attaches the network *after* ``run -d``, through the
sandbox's init process: the veth pair is created with its peer born inside
that namespace (``eth0``), then configured from a netlink socket opened there.

Addresses. Every sandbox gets a /30 of ``cidr`` (default 10.231.0.0/16, 16384
sandboxes): the host side is .1 (its gateway and DNS address), the sandbox .2.
No bridge: with one routed link per sandbox every packet between sandboxes
crosses the host's forward hook, where it is dropped, and no sandbox can
spoof or sniff another's link layer. The kernel is the allocation record: a
slot is taken when its .1 is on a host interface, and the scan-and-assign
runs under a host-wide lock file, so several servers on one host (test runs)
share the range safely.

DNS. The sandbox's resolv.conf names its gateway; nftables DNATs queries sent
there (UDP and TCP 53) to the host's upstream resolver. No process serves
DNS, so it keeps working while the server restarts. The limits: the resolver
must be reachable from a forwarded packet (a loopback stub like
systemd-resolved's 127.0.0.53 is not; its upstreams are used then), and
queries are not filtered by name. DNS counts as egress: a sandbox without
internet access has none. A sandbox whose policy names domains resolves
through the server instead (``domainpolicy``).

Forwarding. ``net.ipv4.ip_forward`` is left alone; forwarding is switched on
per interface instead (each sandbox's host side and the uplinks that carry
the default route), which is what the kernel checks for the receiving
interface, so the host does not start routing for its other interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sandbank.errors import InvalidState, RuntimeFailure
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.linux import netns, netrules, resolv, rtnl
from sandbank.runtime.linux.domainpolicy import DomainRules
from sandbank.runtime.linux.netalloc import Attachment, HostLock, pick_slot, slot_addresses
from sandbank.runtime.linux.netrules import Names
from sandbank.runtime.linux.nft import Nft, NftError, element_keys

log = logging.getLogger(__name__)

DEFAULT_CIDR = "10.231.0.0/16"
SANDBOX_IFNAME = "eth0"
PREFIX = 30
#: Written inside every sandbox's namespace before its link comes up.
IPV6_OFF = {
    f"/proc/sys/net/ipv6/conf/{i}/disable_ipv6": "1"
    for i in ("all", "default", SANDBOX_IFNAME, "lo")
}

T = TypeVar("T")


async def _netlink(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run pyroute2 ``work`` on a standard-library event loop of a worker thread.

    The server's loop may be uvloop, which cannot open the AF_NETLINK
    datagram transport pyroute2's asyncio API is built on.
    """

    def run() -> T:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(work())

    return await asyncio.to_thread(run)


def _sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "w") as fh:
        fh.write(value)


class SandboxNetworks:
    """The networks of one runtime's sandboxes (one data dir) on this host."""

    def __init__(
        self,
        instance: str,
        cidr: str = DEFAULT_CIDR,
        dns: Sequence[str] | None = None,
        nft: Nft | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``instance`` tells this runtime's sandboxes from other servers' on the
        same host (the data dir); ``dns``: resolvers to use instead of the host's;
        ``state_dir``: where the policies with domain rules are kept."""
        self.instance = hashlib.sha256(instance.encode()).hexdigest()[:8]
        try:
            self.cidr = ipaddress.IPv4Network(cidr)
            self._dns_setting = [str(ipaddress.IPv4Address(a)) for a in dns or ()]
        except ValueError as exc:
            raise RuntimeFailure(f"sandbox network settings: {exc}") from exc
        if self.cidr.prefixlen > PREFIX:
            raise RuntimeFailure(f"network cidr {cidr} is too small: at least one /{PREFIX}")
        self.slots = self.cidr.num_addresses // 4
        self.resolver: str | None = None
        self.mtu = 1500
        self._nft = nft
        self._alloc = asyncio.Lock()
        self._cursor = random.randrange(self.slots)
        self._state_dir = state_dir
        self._domains: DomainRules | None = None

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    @property
    def domains(self) -> DomainRules:
        if self._domains is None:
            self._domains = DomainRules(self.nft, self._state_dir, [str(self.cidr)])
        return self._domains

    def names(self, sandbox_id: str) -> Names:
        key = hashlib.sha256(f"{self.instance}/{sandbox_id}".encode()).hexdigest()[:12]
        return Names(key)

    def alias(self, sandbox_id: str) -> str:
        return f"sandbank:{self.instance}:{sandbox_id}"

    # -- host set-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """The shared table, forwarding on the uplinks, the resolver; idempotent."""
        await self.nft.run(netrules.base_table())
        uplinks = await self._uplinks()
        for name, _ in uplinks:
            _sysctl(f"/proc/sys/net/ipv4/conf/{name}/forwarding", "1")
        if uplinks:
            self.mtu = min(1500, *(mtu for _, mtu in uplinks))
        resolvers = self._dns_setting or resolv.upstream_resolvers()
        self.resolver = resolvers[0] if resolvers else None
        if self.resolver is None:
            log.warning("no IPv4 resolver found for sandboxes: they will have no DNS")
        await self.domains.start(self.resolver)
        for sandbox_id, policy in self.domains.stored().items():
            try:
                await self.set_policy(sandbox_id, policy)
            except (InvalidState, NftError) as exc:
                log.info("sandbox %s: domain rules not restored (%s)", sandbox_id, exc)
                self.domains.forget(sandbox_id)
        log.info(
            "sandbox network %s via %s, DNS -> %s (nft: %s)",
            self.cidr, ",".join(n for n, _ in uplinks) or "no default route",
            self.resolver, self.nft.backend,
        )  # fmt: skip

    async def _uplinks(self) -> list[tuple[str, int]]:
        return await _netlink(self._find_uplinks)

    async def _find_uplinks(self) -> list[tuple[str, int]]:
        """(name, mtu) of the interfaces carrying an IPv4 default route."""
        async with AsyncIPRoute() as ipr:
            oifs = {
                r.get("oif")
                async for r in await ipr.route("dump", family=socket.AF_INET)
                if r.get("dst_len") == 0 and r.get("table") == 254 and r.get("oif")
            }
            found: list[tuple[str, int]] = []
            async for link in await ipr.link("dump"):
                if link.get("index") in oifs:
                    found.append((str(link.get("ifname")), int(link.get("mtu") or 1500)))
        return found

    # -- per sandbox -----------------------------------------------------------------------

    async def attach(
        self,
        sandbox_id: str,
        pid: int,
        start: int | None,
        policy: NetworkPolicy,
        *,
        rules_added: bool = False,
    ) -> Attachment:
        """Give the running sandbox whose init is ``pid`` its link, addresses,
        route and policy. The rules exist before the link does: no packet of
        the sandbox ever passes unfiltered. ``rules_added``: ``add_rules`` ran
        already (a restore adds them while criu works)."""
        names = self.names(sandbox_id)
        if not rules_added:
            await self.add_rules(sandbox_id, policy)
        ns_fd = netns.open_netns(pid, start)
        try:
            async with self._alloc, HostLock():
                att = await _netlink(lambda: self._make_link(sandbox_id, names, ns_fd))
        finally:
            os.close(ns_fd)
        if policy.has_domains:
            self.domains.register(sandbox_id, names, att.address, policy)
        return att

    async def add_rules(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """The sandbox's nftables rules, before it has a link (``detach`` removes them)."""
        names = self.names(sandbox_id)
        label = self.alias(sandbox_id)
        ports = self.domains.ports
        await self.nft.run(netrules.add_sandbox(names, policy, self.resolver, ports, label))

    async def close(self) -> None:
        """Stop the DNS forwarder and proxy (sandboxes with domain rules lose
        DNS and ports 80/443 until the next start)."""
        if self._domains is not None:
            await self._domains.close()

    async def _make_link(self, sandbox_id: str, names: Names, ns_fd: int) -> Attachment:
        """Pick a free slot, make the link and configure its inner end; runs
        under the allocation locks (the slot is taken once its .1 is assigned)."""
        async with AsyncIPRoute() as ipr:
            used = {
                (int(addr) - int(self.cidr.network_address)) // 4
                for addr in rtnl.ipv4_addresses()
                if addr in self.cidr
            }
            slot = pick_slot(used, self.slots, self._cursor)
            if slot is None:
                raise RuntimeFailure(f"no free addresses left in the sandbox network {self.cidr}")
            self._cursor = (slot + 1) % self.slots
            att = slot_addresses(self.cidr, slot)
            await ipr.link(
                "add", ifname=names.veth, kind="veth", mtu=self.mtu,
                peer={"ifname": SANDBOX_IFNAME, "net_ns_fd": ns_fd, "mtu": self.mtu},
            )  # fmt: skip
            (index,) = await ipr.link_lookup(ifname=names.veth)
            # Before any address: no IPv6 link-local for the sandbox to talk to.
            _sysctl(f"/proc/sys/net/ipv6/conf/{names.veth}/disable_ipv6", "1")
            _sysctl(f"/proc/sys/net/ipv4/conf/{names.veth}/forwarding", "1")
            _sysctl(f"/proc/sys/net/ipv4/conf/{names.veth}/rp_filter", "1")
            await ipr.link("set", index=index, ifalias=self.alias(sandbox_id))
            await ipr.addr("add", index=index, address=att.gateway, prefixlen=PREFIX)
            await ipr.link("set", index=index, state="up")
        # In the same call: each call costs an event loop and a socket (~2 ms).
        await self._configure_inside(ns_fd, att)
        return att

    async def _configure_inside(self, ns_fd: int, att: Attachment) -> None:
        # IPv4 only: no IPv6 address (link-local included) exists to send from.
        await netns.write_sysctls(ns_fd, IPV6_OFF)
        sock = await netns.netlink_socket(ns_fd)
        async with AsyncIPRoute(fileno=sock.detach()) as ipr:
            (lo,) = await ipr.link_lookup(ifname="lo")
            await ipr.link("set", index=lo, state="up")
            (eth,) = await ipr.link_lookup(ifname=SANDBOX_IFNAME)
            await ipr.addr("add", index=eth, address=att.address, prefixlen=PREFIX)
            await ipr.link("set", index=eth, state="up")
            await ipr.route("add", dst="0.0.0.0/0", gateway=att.gateway)

    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace the policy in one transaction; new connections see it at once,
        open ones (already accepted) go on. Addresses the sandbox resolved are
        re-classified under the new domain rules in the same transaction."""
        names = self.names(sandbox_id)
        resolved: tuple[netrules.Resolved, netrules.Resolved] = ({}, {})
        before = self.domains.book.get(sandbox_id)
        previous = before.policy if before is not None else None
        if policy.has_domains:
            att = await self.address(sandbox_id)
            if att is None:
                raise InvalidState(f"sandbox {sandbox_id} has no network to set a policy on")
            resolved = self.domains.register(sandbox_id, names, att.address, policy)
        else:
            self.domains.forget(sandbox_id)
        ports = self.domains.ports
        try:
            await self.nft.run(
                netrules.replace_policy(names, policy, self.resolver, ports, resolved)
            )
            self.domains.published(sandbox_id, resolved)
        except NftError as exc:
            # The kernel kept the old policy: so does the book.
            self.domains.rollback(sandbox_id, before, previous)
            if "No such file or directory" in str(exc):
                raise InvalidState(
                    f"sandbox {sandbox_id} has no network to set a policy on"
                ) from exc
            raise

    async def address(self, sandbox_id: str) -> Attachment | None:
        """The sandbox's addresses, read back from its host-side link."""
        return await _netlink(lambda: self._read_address(sandbox_id))

    async def _read_address(self, sandbox_id: str) -> Attachment | None:
        async with AsyncIPRoute() as ipr:
            try:
                index = (await ipr.link_lookup(ifname=self.names(sandbox_id).veth) or [None])[0]
            except NetlinkError:
                return None
            if index is None:
                return None
            async for msg in await ipr.addr("dump", family=socket.AF_INET, index=index):
                gateway = ipaddress.IPv4Address(msg.get("address"))
                return Attachment(address=str(gateway + 1), gateway=str(gateway))
        return None

    async def detach(self, sandbox_id: str) -> None:
        """Remove the link (its addresses go with it) and the rules; idempotent."""
        names = self.names(sandbox_id)
        self.domains.forget(sandbox_id)
        await asyncio.to_thread(rtnl.delete_link, names.veth)
        try:
            await self.nft.run(netrules.remove_sandbox(names))
        except NftError:
            # Some were gone already: all of them after a hibernation (which
            # detached the sandbox), or part of a half-made or half-removed one.
            if not await asyncio.to_thread(_nft_leftovers, self.nft, names):
                return
            for cmd in netrules.remove_sandbox(names):
                try:
                    await self.nft.run([cmd])
                except NftError as exc:
                    if "No such file or directory" not in str(exc):
                        raise

    async def leftovers(self, sandbox_id: str) -> list[str]:
        names = self.names(sandbox_id)
        found: list[str] = self.domains.leftovers(sandbox_id)
        if _link_exists(names.veth):
            found.append(f"network link {names.veth}")
        found += await asyncio.to_thread(_nft_leftovers, self.nft, names)
        return found

    async def ids(self) -> set[str]:
        """Sandboxes of this instance that have a link on the host."""
        prefix = self.alias("")
        aliases = await _netlink(_link_aliases)
        return {a[len(prefix) :] for a in aliases if a.startswith(prefix)}


def _nft_leftovers(nft: Nft, names: Names) -> list[str]:
    """The sandbox's nft objects and map entries that still exist.

    Chains and sets are listed all at once, without rules or elements: one
    chain listed by name comes with the rules of the whole table, which costs
    more than every chain without them (12+ vs 4 ms at 500 sandboxes). Each
    listing is its own call: nft fills its cache for the first of a batch only.
    """
    existing: set[tuple[str, object]] = set()
    for kind in ("chain", "set"):
        for item in nft.run_sync([{"list": {f"{kind}s": {"family": netrules.FAMILY}}}]):
            body = item.get(kind)
            if isinstance(body, dict) and body.get("table") == netrules.TABLE:
                existing.add((kind, body.get("name")))
    found = [
        f"nft {kind} {netrules.FAMILY} {netrules.TABLE} {obj['name']}"
        for kind, obj in netrules.sandbox_objects(names)
        if (kind, obj["name"]) in existing
    ]
    for kind, name in netrules.MAPS:
        listing = nft.list_sync(kind, family=netrules.FAMILY, table=netrules.TABLE, name=name)
        if listing is not None and names.veth in element_keys(listing, kind):
            found.append(f"nft {kind} {name} element {names.veth}")
    return found


def _link_exists(name: str) -> bool:
    """One ioctl in the host's namespace: a netlink round on a thread of its
    own costs 20-50 ms on a busy host, on every destroy."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


async def _link_aliases() -> list[str]:
    async with AsyncIPRoute() as ipr:
        return [
            alias
            async for link in await ipr.link("dump")
            if isinstance(alias := link.get("ifalias"), str)
        ]


async def together(*steps: Awaitable[object]) -> None:
    """Run ``steps`` at once (a sandbox's network is made while its agent
    starts); the first failure cancels the rest and is raised as is."""
    tasks = [asyncio.ensure_future(s) for s in steps]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
