"""Fetch the browser terminal's xterm.js from the npm registry, once.

Pinned versions, each tarball checked against the registry's sha512
``integrity`` before anything is unpacked; the files land in
src/sandbank/dashboard/vendor (gitignored) and the tarballs stay in a cache,
so a second run does nothing. Run by scripts/install.sh; stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "src" / "sandbank" / "dashboard" / "vendor"
CACHE = Path(os.environ.get("SANDBANK_CACHE_DIR") or ROOT / ".cache") / "npm"
REGISTRY = "https://registry.npmjs.org"

#: (package, version, integrity, {file in the tarball: name in vendor/})
PACKAGES = [
    (
        "@xterm/xterm",
        "6.0.0",
        "sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg==",
        {"package/lib/xterm.js": "xterm.js", "package/css/xterm.css": "xterm.css",
         "package/LICENSE": "xterm.LICENSE"},
    ),
    (
        "@xterm/addon-fit",
        "0.11.0",
        "sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g==",
        {"package/lib/addon-fit.js": "addon-fit.js", "package/LICENSE": "addon-fit.LICENSE"},
    ),
]  # fmt: skip


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(package: str, version: str, integrity: str) -> bytes:
    """The verified tarball, from the cache or the registry."""
    name = f"{package.split('/')[-1]}-{version}.tgz"
    cached = CACHE / name
    if cached.is_file():
        data = cached.read_bytes()
        if integrity_of(data) == integrity:
            return data
    url = f"{REGISTRY}/{package}/-/{name}"
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
            break
        except OSError as exc:
            if attempt == 2:
                raise SystemExit(f"cannot fetch {url}: {exc}") from exc
            time.sleep(2)
    if integrity_of(data) != integrity:
        raise SystemExit(f"{url} does not match its pinned integrity {integrity}; not installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.with_suffix(".part").write_bytes(data)
    cached.with_suffix(".part").replace(cached)
    return data


def main() -> int:
    stamp = VENDOR / ".versions"
    want = "\n".join(f"{p}@{v} {i}" for p, v, i, _ in PACKAGES) + "\n"
    if stamp.is_file() and stamp.read_text() == want:
        return 0
    VENDOR.mkdir(parents=True, exist_ok=True)
    for package, version, integrity, files in PACKAGES:
        with tarfile.open(fileobj=io.BytesIO(tarball(package, version, integrity))) as tar:
            for member, target in files.items():
                source = tar.extractfile(member)
                if source is None:
                    raise SystemExit(f"{package}@{version} has no {member}")
                part = VENDOR / f"{target}.part"
                part.write_bytes(source.read())
                part.replace(VENDOR / target)
        print(f"installed {package}@{version} for the browser terminal", file=sys.stderr)
    stamp.write_text(want)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
