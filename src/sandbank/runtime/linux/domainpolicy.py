"""Domain rules of sandbox policies: the book, the forwarder, the proxy, the sets.

``SandboxNetworks`` delegates here for every sandbox whose policy names
domains. A sandbox is registered (by its address) once its link exists; from
then on its DNS answers fill its resolved-address sets (``dnsforward``) and its
HTTP/TLS connections are checked by name (``sniproxy``). Its policy is also
written to ``state_dir/<id>.json``: the forwarder and proxy listen on ports
chosen at start, so a restarted server re-registers the sandboxes it finds
there and points their redirects at its new ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.linux import netrules
from sandbank.runtime.linux.dnsforward import DnsForwarder
from sandbank.runtime.linux.domains import DomainBook, SandboxDomains
from sandbank.runtime.linux.netrules import DomainPorts, Names
from sandbank.runtime.linux.nft import Nft, NftError
from sandbank.runtime.linux.sniproxy import SniProxy

log = logging.getLogger(__name__)


class DomainRules:
    def __init__(self, nft: Nft, state_dir: Path | None, forbidden: Sequence[str]) -> None:
        """``forbidden``: networks the proxy never connects to (the sandboxes')."""
        self.nft = nft
        self.state_dir = state_dir
        self.book = DomainBook()
        self.forwarder: DnsForwarder | None = None
        self.proxy = SniProxy(self.book, forbidden)
        self._locks: dict[str, asyncio.Lock] = {}
        #: Does adding an element again update its timeout (recent kernels)?
        self.timeout_updates = False

    async def start(self, resolver: str | None) -> None:
        self.timeout_updates = await asyncio.to_thread(self._probe_timeout_update)
        self.forwarder = DnsForwarder(self.book, resolver, self.publish)
        await self.forwarder.start()
        await self.proxy.start()
        assert self.ports is not None
        await self.nft.run(netrules.host_ports(self.ports, add=True))
        await asyncio.to_thread(self._prune_host_ports)
        log.info("domain rules: DNS forwarder on port %d, proxy on %d",
                 self.forwarder.port, self.proxy.port)  # fmt: skip

    async def close(self) -> None:
        if self.ports is not None:
            with contextlib.suppress(NftError):
                await self.nft.run(netrules.host_ports(self.ports, add=False))
        if self.forwarder is not None:
            await self.forwarder.close()
        await self.proxy.close()

    @property
    def ports(self) -> DomainPorts | None:
        if self.forwarder is None or not self.forwarder.port or not self.proxy.port:
            return None
        return DomainPorts(dns=self.forwarder.port, proxy=self.proxy.port)

    def register(
        self, sandbox_id: str, names: Names, address: str, policy: NetworkPolicy
    ) -> tuple[netrules.Resolved, netrules.Resolved]:
        """Put (or re-police) a sandbox in the book and store its policy; what
        it resolved so far, classified under ``policy``."""
        entry = self.book.put(sandbox_id, names, address, policy)
        self._store(sandbox_id, policy)
        return entry.elements()

    def rollback(
        self, sandbox_id: str, before: SandboxDomains | None, previous: NetworkPolicy | None
    ) -> None:
        """Back to the registration ``before`` a failed change, with its
        ``previous`` policy (None, None: it was not registered)."""
        if before is None or previous is None:
            self.forget(sandbox_id)
        else:
            self.register(sandbox_id, before.names, before.address, previous)

    def forget(self, sandbox_id: str) -> None:
        self.book.drop(sandbox_id)
        self._locks.pop(sandbox_id, None)
        if self.state_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{sandbox_id}.json").unlink()

    async def publish(self, entry: SandboxDomains) -> None:
        """Bring the sandbox's resolved-address sets up to date with the book:
        add what they lack (or, where a re-added element keeps its old timeout,
        replace them whole). One at a time per sandbox."""
        lock = self._locks.setdefault(entry.sandbox_id, asyncio.Lock())
        async with lock:
            allowed, denied = entry.elements(only_stale=True)
            if not allowed and not denied:
                return
            if self.timeout_updates:
                await self.nft.run(netrules.add_resolved(entry.names, allowed, denied))
                entry.published(allowed, denied, whole=False)
            else:
                allowed, denied = entry.elements()
                await self.nft.run(netrules.refresh_resolved(entry.names, allowed, denied))
                entry.published(allowed, denied, whole=True)

    def published(self, sandbox_id: str, resolved: tuple[netrules.Resolved, ...]) -> None:
        """A policy change put exactly ``resolved`` into the sandbox's sets."""
        entry = self.book.get(sandbox_id)
        if entry is not None:
            entry.published(resolved[0], resolved[1], whole=True)

    def _prune_host_ports(self) -> None:
        """Unlist the ports of servers that died without closing: a live one
        listens on its ports before it lists them."""
        listing = self.nft.list_sync(
            "set", family=netrules.FAMILY, table=netrules.TABLE, name="hostports"
        )
        listed = {
            e
            for item in listing or []
            for e in (item.get("set") or {}).get("elem") or []
            if isinstance(e, int)
        }
        stale = sorted(listed - _listening_tcp_ports())
        if stale:
            elem = {"family": netrules.FAMILY, "table": netrules.TABLE, "name": "hostports"}
            with contextlib.suppress(NftError):  # another server pruned them first
                self.nft.run_sync([{"delete": {"element": {**elem, "elem": stale}}}])
            log.info("unlisted the DNS forwarder/proxy ports of dead servers: %s", stale)

    def _probe_timeout_update(self) -> bool:
        """Add an element twice, with a short then a long timeout, to a
        throwaway set of the table, and see which the kernel kept."""
        probe = {"family": netrules.FAMILY, "table": netrules.TABLE, "name": f"probe_{id(self):x}"}

        def elem(timeout: int) -> dict[str, object]:
            return {
                "add": {
                    "element": {
                        **probe,
                        "elem": [{"elem": {"val": "192.0.2.1", "timeout": timeout}}],
                    }
                }
            }

        try:
            self.nft.run_sync(
                [{"add": {"set": {**probe, "type": "ipv4_addr", "flags": ["timeout"]}}}, elem(5)]
            )
            self.nft.run_sync([elem(3600)])
            listing = self.nft.list_sync("set", **probe) or []
            expires = [
                e["elem"].get("expires", 0)
                for item in listing
                for e in (item.get("set") or {}).get("elem") or []
                if isinstance(e, dict) and isinstance(e.get("elem"), dict)
            ]
            return bool(expires) and expires[0] > 60
        finally:
            with contextlib.suppress(NftError):
                self.nft.run_sync([{"delete": {"set": probe}}])

    def _store(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.state_dir / f"{sandbox_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(policy.to_dict()))
        tmp.replace(path)

    def stored(self) -> dict[str, NetworkPolicy]:
        """The policies of the sandboxes registered before a restart."""
        found: dict[str, NetworkPolicy] = {}
        if self.state_dir is None or not self.state_dir.is_dir():
            return found
        for path in self.state_dir.glob("*.json"):
            try:
                found[path.stem] = NetworkPolicy.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                log.warning("ignoring stored network policy %s: %s", path, exc)
        return found

    def leftovers(self, sandbox_id: str) -> list[str]:
        found = []
        if self.book.get(sandbox_id) is not None:
            found.append(f"domain rules of {sandbox_id} in the resolver")
        if self.state_dir is not None and (self.state_dir / f"{sandbox_id}.json").exists():
            found.append(f"stored network policy {self.state_dir / sandbox_id}.json")
        return found


def _listening_tcp_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> set[int]:
    """Local ports of the host's listening TCP sockets (state 0A)."""
    ports: set[int] = set()
    for table in tables:
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
