"""A stand-in for the internet, in a network namespace of the test's own.

Tests of sandbox networking never send a packet to a real external address:
they talk to hosts this module makes. ``FakeInternet`` is a namespace joined
to the host by a veth, holding addresses in the documentation ranges
(TEST-NET-2 and -3, and one link-local "metadata" address), each with a TCP
service that answers with the address it was reached at, an HTTP server on
port 80 and an HTTPS server on 443 (a certificate of the test's own CA, see
``ca_pem``) that answer with the Host (or SNI) they were asked for and the
address they were reached at, plus a DNS server that answers A queries for
the names in ``NAMES`` with their address and every other name with ``WEB``
(over UDP and TCP).
The host routes those ranges to it, as if they were out on the uplink.

Everything it makes is removed by ``close``, also after a failed ``open``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A web host, another one in a second range, and a cloud-metadata look-alike.
WEB = "198.51.100.10"
OTHER = "203.0.113.10"
METADATA = "169.254.169.254"
HOST_SIDE = "198.51.100.1"
PORT = 8080
#: A third web host, for the names under the wildcard.
WILD = "198.51.100.20"
#: Answer of the fake DNS server to every A query for a name not in NAMES.
DNS_ANSWER = WEB
#: The names the fake DNS server knows (``.test`` is reserved, RFC 6761).
#: ``shared.test`` is another site on ``web.test``'s address.
NAMES = {
    "web.test": WEB,
    "shared.test": WEB,
    "other.test": OTHER,
    "api.wild.test": WILD,
    "deep.api.wild.test": WILD,
}
DNS_TTL = 60

#: Run inside a sandbox: ``python3 -c FETCH CA_FILE TARGET...`` fetches every
#: target at once; a target is ``scheme:name`` (resolved by the sandbox),
#: ``scheme:name@address`` (that name sent to that address), or
#: ``tcp:address`` (the echo service).
#: Prints {target: "ok <first line>" | "fail <error>"}.
FETCH = r"""
import json, socket, ssl, sys, threading
ctx = ssl.create_default_context(cafile=sys.argv[1])
out = {}
def fetch(target):
    scheme, rest = target.split(":", 1)
    name, _, address = rest.partition("@")
    try:
        if scheme == "tcp":
            with socket.create_connection((name, ECHO_PORT), timeout=4) as s:
                s.settimeout(4)
                out[target] = "ok " + s.recv(100).decode().strip()
            return
        host = address or socket.gethostbyname(name)
        port = 443 if scheme == "https" else 80
        with socket.create_connection((host, port), timeout=4) as s:
            s.settimeout(4)
            if scheme == "https":
                s = ctx.wrap_socket(s, server_hostname=name)
            s.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            raise OSError("no answer")
        out[target] = "ok " + body.decode().strip()
    except Exception as exc:
        out[target] = "fail " + type(exc).__name__
threads = [threading.Thread(target=fetch, args=(t,)) for t in sys.argv[2:]]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
""".replace("ECHO_PORT", str(PORT))

#: Every FakeInternet this process opened (the leak check asks each).
OPENED: list[FakeInternet] = []

_SERVER = r"""
import http.server, json, socket, socketserver, ssl, struct, sys, threading

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        addr = self.request.getsockname()[0]
        self.request.sendall(f"hello from {addr}\n".encode())

class TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

def qname(query):
    labels, pos = [], 12
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode().lower())
        pos += 1 + query[pos]
    return ".".join(labels), pos + 1

def respond(query, names):
    name, end = qname(query)
    qtype = query[end : end + 2]
    end += 4
    head = query[:2] + b"\x81\x80" + query[4:6]
    if qtype != b"\0\x01":  # not A: no records
        return head + b"\0\0\0\0\0\0" + query[12:end]
    answer = socket.inet_aton(names.get(name, sys.argv[2]))
    record = b"\xc0\x0c\0\x01\0\x01" + struct.pack("!I", int(sys.argv[4])) + b"\0\x04"
    return head + b"\0\x01\0\0\0\0" + query[12:end] + record + answer

def dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 53))
    names = json.loads(sys.argv[3])
    while True:
        query, peer = sock.recvfrom(512)
        sock.sendto(respond(query, names), peer)

class DnsOverTcp(socketserver.BaseRequestHandler):
    def handle(self):
        size = struct.unpack("!H", self.request.recv(2))[0]
        query = b""
        while len(query) < size:
            query += self.request.recv(size - len(query))
        reply = respond(query, json.loads(sys.argv[3]))
        self.request.sendall(struct.pack("!H", len(reply)) + reply)

class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sni = getattr(self.connection, "sni", None)
        host = sni or (self.headers.get("Host") or "").split(":")[0]
        body = f"{host} at {self.connection.getsockname()[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class WebServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

def https(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    def remember(sock, name, _ctx):
        sock.sni = name
    ctx.sni_callback = remember
    class TLS(WebServer):
        def get_request(self):
            conn, addr = self.socket.accept()
            tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return tls, addr
        def finish_request(self, request, client_address):
            request.settimeout(5)
            request.do_handshake()
            super().finish_request(request, client_address)
    TLS(("0.0.0.0", 443), Web).serve_forever()

threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=TCP(("0.0.0.0", 53), DnsOverTcp).serve_forever, daemon=True).start()
threading.Thread(target=WebServer(("0.0.0.0", 80), Web).serve_forever, daemon=True).start()
threading.Thread(target=https, args=(sys.argv[5], sys.argv[6]), daemon=True).start()
TCP(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signs for every name in NAMES and the hosts'
    addresses (openssl CLI). Returns (ca.pem, cert.pem, key.pem)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem")
    )
    hosts = [*(f"DNS:{n}" for n in NAMES), "DNS:*.wild.test"]
    sans = ",".join([*hosts, *(f"IP:{a}" for a in (WEB, OTHER, WILD))])
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", "/CN=sandbank test CA")  # fmt: skip
    openssl("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=web.test")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return ca, cert, key


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
        self._tmp = tempfile.TemporaryDirectory(prefix="sbk-fakenet-")
        #: The test CA's certificate: trust it to reach the HTTPS hosts.
        self.ca_pem = ""

    def open(self) -> FakeInternet:
        OPENED.append(self)
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
        for addr in (f"{WEB}/24", f"{WILD}/24", f"{OTHER}/24", f"{METADATA}/32"):
            _ip("addr", "add", addr, "dev", "up0", ns=self.ns)
        _ip("link", "set", "up0", "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("route", "add", "default", "via", HOST_SIDE, ns=self.ns)
        for dst in ("203.0.113.0/24", f"{METADATA}/32"):
            _ip("route", "add", dst, "via", WEB, "dev", self.host_if)
            self._routes.append(dst)
        # Replies to sandboxes come in here and are forwarded on to them.
        Path(f"/proc/sys/net/ipv4/conf/{self.host_if}/forwarding").write_text("1")
        ca, cert, key = _make_certificates(Path(self._tmp.name))
        self.ca_pem = ca.read_text()
        argv = [str(PORT), DNS_ANSWER, json.dumps(NAMES), str(DNS_TTL), str(cert), str(key)]
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", _SERVER, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ip", "netns", "exec", self.ns, "ss", "-Hltn",
                 f"( sport = :{PORT} or sport = :80 or sport = :443 )"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if len(probe.stdout.strip().splitlines()) == 3:
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
        self._tmp.cleanup()

    def leftovers(self) -> list[str]:
        found: list[str] = []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if self.host_if in links:
            found.append(f"link {self.host_if}")
        if Path(f"/run/netns/{self.ns}").exists():
            found.append(f"netns {self.ns}")
        return found
