"""The resolver of sandboxes with domain rules: forwards, and learns on the way.

nftables redirects every DNS query (UDP and TCP port 53, to any address) of a
sandbox whose policy names domains to this forwarder, one per runtime,
listening on an ephemeral port of the host. It knows the sandbox by the
query's source address (a spoofed source never gets here: the input hook
drops what does not route back through the link it came in on). The query
goes unchanged to the upstream resolver; before the answer goes back, its A
records are classified by the name asked for (``DomainBook``) and the
addresses of allowed or denied names are put in the sandbox's nftables sets,
with the record's TTL (clamped) as the element's timeout. So the firewall
knows an address before the sandbox does.

Queries from addresses that are not a sandbox with domain rules are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from sandbank.runtime.linux.domains import DomainBook, SandboxDomains

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 4.0
MAX_TCP_MESSAGE = 65535
#: UDP queries being answered at once, all sandboxes together; more are
#: dropped (as a lost packet: the client retries), so a flood costs the
#: server a bounded number of sockets.
MAX_IN_FLIGHT = 512

#: Called with a sandbox whose resolutions changed; returns once its nftables
#: sets hold them.
Publish = Callable[[SandboxDomains], Awaitable[None]]


def learn(entry: SandboxDomains, reply: bytes) -> bool:
    """Record the A answers of ``reply`` against the name asked; True if any
    of them matter to the policy (so the sets must be refreshed)."""
    try:
        record = DNSRecord.parse(reply)
    except (DNSError, ValueError, IndexError, struct.error):
        return False
    if not record.questions:
        return False
    asked = str(record.questions[0].qname).rstrip(".").lower()
    if entry.policy.name_verdict(asked) is None:
        return False
    found = False
    for rr in record.rr:
        if rr.rtype == QTYPE.A:
            entry.learn(asked, str(rr.rdata), int(rr.ttl))
            found = True
    return found


def refusal(query: bytes) -> bytes | None:
    with contextlib.suppress(DNSError, ValueError, IndexError, struct.error):
        reply = DNSRecord.parse(query).reply()
        reply.header.rcode = RCODE.REFUSED
        return bytes(reply.pack())
    return None


class DnsForwarder:
    """UDP and TCP on one port of every host address; see the module doc."""

    def __init__(self, book: DomainBook, upstream: str | None, publish: Publish) -> None:
        self.book = book
        self.upstream = upstream
        self.publish = publish
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # One port for both: bind TCP first (ephemeral), then UDP on the same number.
        for _ in range(20):
            tcp = await asyncio.start_server(self._serve_tcp, "0.0.0.0", 0)
            port = tcp.sockets[0].getsockname()[1]
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=("0.0.0.0", port)
                )
            except OSError:
                tcp.close()
                continue
            self._tcp, self._udp, self.port = tcp, transport, port
            return
        raise OSError("no port free for both UDP and TCP DNS")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def answer(self, query: bytes, source: str, tcp: bool) -> bytes | None:
        """The reply for a sandbox's query, its addresses already in the sets."""
        entry = self.book.by_address(source)
        if entry is None or self.upstream is None or not entry.policy.allow_internet_access:
            return refusal(query)
        try:
            reply = await asyncio.wait_for(self._ask(query, tcp), UPSTREAM_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("DNS upstream %s: %s", self.upstream, exc)
            return None  # the sandbox's resolver retries or times out, as with a lost packet
        if learn(entry, reply):
            await self.publish(entry)
        return reply

    async def _ask(self, query: bytes, tcp: bool) -> bytes:
        assert self.upstream is not None
        if tcp:
            reader, writer = await asyncio.open_connection(self.upstream, 53)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                return await reader.readexactly(size)
            finally:
                writer.close()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (self.upstream, 53))
            await loop.sock_sendall(sock, query)
            while True:
                reply = await loop.sock_recv(sock, MAX_TCP_MESSAGE)
                if reply[:2] == query[:2]:
                    return reply
        finally:
            sock.close()

    @property
    def busy(self) -> bool:
        return len(self._tasks) >= MAX_IN_FLIGHT

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await self.answer(await reader.readexactly(size), source, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder) -> None:
        self.forwarder = forwarder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.forwarder.busy:
            return
        self.forwarder.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.forwarder.answer(data, addr[0], tcp=False)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)
