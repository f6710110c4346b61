"""Tiny package sources a test serves itself: an apt repository with one .deb
(dpkg-deb + apt-ftparchive) and a pip "simple" index with one wheel, served
over HTTP from a network namespace the test makes (never a real external address)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.support.fakenet import _ip

HTTP_PORT = 8081
DEB = "sbk-hello"
#: ``python -m http.server`` would look its address up in DNS (getfqdn) first,
#: which waits for timeouts in a namespace without a resolver.
_SERVER = r"""
import functools, http.server, socketserver, sys
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"""
WHEEL = "sbk-pkg"


def make_apt_repo(root: Path, url: str) -> str:
    """``root``/apt: a flat repository holding ``sbk-hello``, to be served at ``url``;
    returns its sources line."""
    pkg = root / "build" / DEB
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {DEB}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nDescription: a test package\n"
    )
    script = pkg / "usr/bin" / DEB
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello-from-deb\n")
    script.chmod(0o755)
    repo = root / "apt"
    repo.mkdir()
    run = dict(check=True, capture_output=True, timeout=60)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg),
                    str(repo / f"{DEB}_1.0_all.deb")], **run)  # type: ignore[call-overload]  # fmt: skip
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, **run)  # type: ignore[call-overload]
    (repo / "Packages").write_bytes(packages.stdout)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=repo, **run)  # type: ignore[call-overload]
    (repo / "Release").write_bytes(release.stdout)
    return f"deb [trusted=yes] {url}/apt ./"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_pip_index(root: Path, url: str) -> str:
    """``root``/simple: an index holding the wheel ``sbk-pkg`` (module ``sbk_pkg``)."""
    files = {
        "sbk_pkg/__init__.py": b"VALUE = 42\n",
        "sbk_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sbk-pkg\nVersion: 1.0\n",
        "sbk_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += "sbk_pkg-1.0.dist-info/RECORD,,\n"
    wheel = root / "files" / "sbk_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr("sbk_pkg-1.0.dist-info/RECORD", record)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    project = root / "simple" / WHEEL
    project.mkdir(parents=True)
    (root / "simple/index.html").write_text(f'<a href="{WHEEL}/">{WHEEL}</a>\n')
    (project / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n'
    )
    return f"{url}/simple/"


class PackageHost:
    """A one-address "internet" host in a namespace of its own, serving a directory
    over HTTP. Its /24 is picked at random in 198.18.0.0/15 (the benchmarking
    range) among those the host has no route for, so concurrent test runs (and
    ``FakeInternet``, on the documentation ranges) never collide."""

    def __init__(self, directory: Path) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.host_if = f"sbkp-{tag}", f"sbkp{tag}h"
        self.directory = directory
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        free = [n for n in range(512) if f"198.{18 + n // 256}.{n % 256}.0/24" not in routes]
        n = secrets.choice(free)
        net = f"198.{18 + n // 256}.{n % 256}"
        self.address, self.host_side = f"{net}.10", f"{net}.1"
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{HTTP_PORT}"

    def open(self) -> PackageHost:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "up0", "netns", self.ns)
        _ip("addr", "add", f"{self.host_side}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("addr", "add", f"{self.address}/24", "dev", "up0", ns=self.ns)
        _ip("link", "set", "up0", "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("route", "add", "default", "via", self.host_side, ns=self.ns)
        Path(f"/proc/sys/net/ipv4/conf/{self.host_if}/forwarding").write_text("1")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", _SERVER, self.address,
             str(HTTP_PORT), str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ip", "netns", "exec", self.ns, "ss", "-Hltn", f"sport = :{HTTP_PORT}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError("package host did not start serving")

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=5)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)

    def leftovers(self) -> list[str]:
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found = [f"link {self.host_if}"] if self.host_if in links else []
        if Path(f"/run/netns/{self.ns}").exists():
            found.append(f"netns {self.ns}")
        return found
