"""Shared bench plumbing: a real server on a scratch data dir, percentiles,
and a podman image of the same root filesystem for baselines."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server import ServerProcess, free_port  # noqa: E402

BENCH_ROOT = Path(os.environ.get("SANDBANK_BENCH_ROOT", "/var/lib/sandbank-bench"))
TEMPLATES = Path(os.environ.get("SANDBANK_TEST_TEMPLATES", "/var/lib/sandbank-test/templates"))
PODMAN_IMAGE = "localhost/sandbank-bench-base:latest"
UID_SHIFT = 100000
# Podman's default rlimits, and even --ulimit host, fail here: raising nofile or
# nproc needs CAP_SYS_RESOURCE, which this host's root lacks. Lower limits work.
PODMAN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return (
        f"{name:<44} n={len(ms):<4} p50={pct(ms, 50):8.2f} ms  p99={pct(ms, 99):8.2f} ms"
        f"  mean={statistics.fmean(ms):8.2f} ms"
    )


@contextmanager
def running_server(name: str, log_level: str = "warning", **env: str) -> Iterator[ServerProcess]:
    """A server on a scratch data dir; ``env`` adds SANDBANK_* settings (the
    warm pool is off unless SANDBANK_POOL_SIZE is given)."""
    data_dir = BENCH_ROOT / f"{name}-{os.getpid()}"
    srv = ServerProcess(
        data_dir=data_dir,
        templates_dir=TEMPLATES,
        api_key="sbk_bench_" + os.urandom(8).hex(),
        port=free_port(),
        extra_env={"SANDBANK_QUOTA_MAX_SANDBOXES": "1000", **env},
        log_level=log_level,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        # Pooled sandboxes outlive the server by design: tear them down too.
        srv.purge()


# One client for every scrape: a new one costs ~20 ms of CPU (its SSL context).
_scraper = httpx.Client(timeout=10)


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """One sample from the server's /metrics (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in _scraper.get(f"{srv.url}/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        if metric_name == name and set(filter(None, rest.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def template_rootfs() -> Path:
    candidates = sorted(TEMPLATES.glob("base*/rootfs")) + sorted(TEMPLATES.glob("base/*/rootfs"))
    if not candidates:
        raise SystemExit(f"no built base template under {TEMPLATES}; run `make test` first")
    return candidates[0]


def podman_available() -> bool:
    return shutil.which("podman") is not None


def ensure_podman_image() -> None:
    """Import the base template's root filesystem as a local podman image, with
    ownership shifted back to the plain ids the template was built with."""
    probe = subprocess.run(["podman", "image", "exists", PODMAN_IMAGE], check=False)
    if probe.returncode == 0:
        return
    rootfs = template_rootfs()
    proc = subprocess.Popen(
        ["podman", "import", "-", PODMAN_IMAGE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stdin is not None

    def unshift(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = max(0, info.uid - UID_SHIFT)
        info.gid = max(0, info.gid - UID_SHIFT)
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry, filter=unshift)
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("podman import failed")
