"""Name checks on HTTP and TLS: a transparent proxy for sandboxes with domain rules.

An address is not a name: one server (a CDN edge, a shared host) answers for
many. So TCP to ports 80 and 443 of a sandbox whose policy names domains is
redirected by nftables to this proxy, which reads the name the client asks
for (TLS ClientHello SNI, or the HTTP Host header), decides with
``SandboxDomains.connection_allowed`` and, if allowed, connects to the
original destination (``SO_ORIGINAL_DST``) from the host and relays bytes
both ways, untouched: TLS stays end to end, nothing is decrypted. A refused
connection is closed before anything reaches the far end.

The client speaks first in both protocols; one that sends nothing within
``FIRST_BYTES_WAIT`` is judged by its address alone (as is anything that is
neither TLS nor HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Sequence

from sandbank.runtime.linux.domains import DomainBook, SandboxDomains

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
FIRST_BYTES_WAIT = 3.0
CONNECT_TIMEOUT = 10.0
#: A ClientHello (post-quantum key shares included) or a request head fits.
MAX_PEEK = 16384
CHUNK = 65536
#: Connections relayed at once for one sandbox (each holds two sockets of the
#: server); more are closed at once.
MAX_PER_SANDBOX = 256


class NeedMore(Exception):
    """The bytes so far are a prefix of something that names a host."""


def tls_server_name(data: bytes) -> str | None:
    """The SNI of a TLS ClientHello at the start of ``data``; None if it is not
    one or names none; NeedMore while it is cut short."""
    handshake = b""
    pos = 0
    while True:  # a ClientHello may span several records
        if len(data) < pos + 5:
            raise NeedMore
        if data[pos] != 0x16:
            return None if pos == 0 else _parse_hello(handshake)
        size = struct.unpack_from("!H", data, pos + 3)[0]
        if len(data) < pos + 5 + size:
            raise NeedMore
        handshake += data[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            return _parse_hello(handshake)


def _parse_hello(hs: bytes) -> str | None:
    try:
        if hs[0] != 1:
            return None
        p = 4 + 2 + 32
        p += 1 + hs[p]  # session id
        p += 2 + struct.unpack_from("!H", hs, p)[0]  # cipher suites
        p += 1 + hs[p]  # compression methods
        end = p + 2 + struct.unpack_from("!H", hs, p)[0]
        p += 2
        while p + 4 <= end:
            kind, size = struct.unpack_from("!HH", hs, p)
            p += 4
            if kind == 0:  # server_name: list length, then (type, length, name)
                q = p + 2
                while q + 3 <= p + size:
                    name_type, name_len = hs[q], struct.unpack_from("!H", hs, q + 1)[0]
                    if name_type == 0:
                        return hs[q + 3 : q + 3 + name_len].decode("ascii").lower()
                    q += 3 + name_len
                return None
            p += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ")


def http_host(data: bytes) -> str | None:
    """The Host header's name (no port) of an HTTP/1 request head; NeedMore."""
    if not any(data.startswith(m) or m.startswith(data) for m in _METHODS):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise NeedMore
    for line in data[:end].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("latin-1").lower()
            if host.startswith("["):
                return None
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


def requested_name(data: bytes) -> str | None:
    """SNI or Host of the client's first bytes; NeedMore while undecided."""
    if data[:1] == b"\x16":
        return tls_server_name(data)
    return http_host(data)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


class SniProxy:
    """One listening port on every host address; only redirected sandbox
    connections reach it (the input hook drops the rest from sandboxes)."""

    def __init__(self, book: DomainBook, forbidden: Sequence[str]) -> None:
        self.book = book
        self.forbidden = [ipaddress.IPv4Network(n) for n in forbidden]
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._open: dict[str, int] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "0.0.0.0", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        entry = self.book.by_address(source)
        if entry is None or self._open.get(source, 0) >= MAX_PER_SANDBOX:
            return
        self._open[source] = self._open.get(source, 0) + 1
        try:
            await self._relay(entry, reader, writer)
        finally:
            self._open[source] -= 1
            if not self._open[source]:
                del self._open[source]

    async def _relay(
        self, entry: SandboxDomains, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        address, port = original_destination(writer.get_extra_info("socket"))
        first, name = await self._first_bytes(reader)
        ip = ipaddress.IPv4Address(address)
        if any(ip in net for net in self.forbidden) or not entry.connection_allowed(address, name):
            log.debug("sandbox %s: refused %s:%d (name %s)", entry.sandbox_id, address, port, name)
            return
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(address, port), CONNECT_TIMEOUT
        )
        try:
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _first_bytes(self, reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_BYTES_WAIT
        while len(data) < MAX_PEEK:
            if data:
                try:
                    return data, requested_name(data)
                except NeedMore:
                    pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(MAX_PEEK - len(data)), left)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data, None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        with contextlib.suppress(OSError):
            writer.close()
