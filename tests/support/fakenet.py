"""A stand-in for the internet, in a network namespace of the test's own.

Tests of sandbox networking never send a packet to a real external address:
they talk to hosts this module makes. ``FakeInternet`` is a namespace joined
to the host by a veth, holding addresses in the documentation ranges
(TEST-NET-2 and -3, and one link-local "metadata" address), each with a TCP
service that answers with the address it was reached at, plus a DNS server
that answers every A query with ``WEB``. The host routes those ranges to it,
as if they were out on the uplink.

Everything it makes is removed by ``close``, also after a failed ``open``.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from pathlib import Path

#: A web host, another one in a second range, and a cloud-metadata look-alike.
WEB = "198.51.100.10"
OTHER = "203.0.113.10"
METADATA = "169.254.169.254"
HOST_SIDE = "198.51.100.1"
PORT = 8080
#: Answer of the fake DNS server to every A query.
DNS_ANSWER = WEB

_SERVER = r"""
import socket, socketserver, struct, sys, threading

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        addr = self.request.getsockname()[0]
        self.request.sendall(f"hello from {addr}\n".encode())

class TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

def dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 53))
    answer = socket.inet_aton(sys.argv[2])
    while True:
        query, peer = sock.recvfrom(512)
        end = query.index(b"\0", 12) + 5
        head = query[:2] + b"\x81\x80" + query[4:6] + b"\0\x01\0\0\0\0"
        record = b"\xc0\x0c\0\x01\0\x01\0\0\0\x3c\0\x04" + answer
        sock.sendto(head + query[12:end] + record, peer)

threading.Thread(target=dns, daemon=True).start()
TCP(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


class FakeInternet:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"sbkt-{tag}"
        self.host_if = f"sbkt{tag}h"
        self.server: subprocess.Popen[bytes] | None = None
        self._routes: list[str] = []

    def open(self) -> FakeInternet:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "up0", "netns", self.ns)
        _ip("addr", "add", f"{HOST_SIDE}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        for addr in (f"{WEB}/24", f"{OTHER}/24", f"{METADATA}/32"):
            _ip("addr", "add", addr, "dev", "up0", ns=self.ns)
        _ip("link", "set", "up0", "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("route", "add", "default", "via", HOST_SIDE, ns=self.ns)
        for dst in ("203.0.113.0/24", f"{METADATA}/32"):
            _ip("route", "add", dst, "via", WEB, "dev", self.host_if)
            self._routes.append(dst)
        # Replies to sandboxes come in here and are forwarded on to them.
        Path(f"/proc/sys/net/ipv4/conf/{self.host_if}/forwarding").write_text("1")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", _SERVER, str(PORT), DNS_ANSWER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ip", "netns", "exec", self.ns, "ss", "-Hltn", f"sport = :{PORT}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.stdout.strip():
                return
            if self.server.poll() is not None:
                raise RuntimeError(f"fake internet server died: {self.server.stderr!r}")
            time.sleep(0.05)
        raise RuntimeError("fake internet server did not start")

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=5)
        for dst in self._routes:
            subprocess.run(["ip", "route", "del", dst], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)

    def leftovers(self) -> list[str]:
        found: list[str] = []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if self.host_if in links:
            found.append(f"link {self.host_if}")
        if Path(f"/run/netns/{self.ns}").exists():
            found.append(f"netns {self.ns}")
        return found
