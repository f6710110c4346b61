"""Templates: what a build costs, what the cache costs, and what a sandbox of a
built template costs to create against one of the base, in the same run.

A built template is its build's layer stacked on the base (two overlay lower
layers instead of one). Printed: the cold build and the cache hit; create p50
from ``base``, from the built template, and from a built template with a start
command and a ready check (the boot included); and, as the alternative that was
not taken, the time to flatten (copy) the base tree into a new one.

No network: the spec only writes files and runs local commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import BENCH_ROOT, running_server, summary, template_rootfs

from sandbank import Sandbox, Templates

N = 15
LAYER_SPEC = {
    "files": {"/opt/bench/config.json": '{"bench": true}\n'},
    "run": [
        # ~2000 small files and one 16 MiB file: a layer of a realistic shape.
        "python3 -c \"import os; os.makedirs('/opt/bench/lib', exist_ok=True);"
        " [open(f'/opt/bench/lib/m{i}.py', 'w').write('x = %d\\n' % i) for i in range(2000)]\"",
        "head -c 16777216 /dev/urandom > /opt/bench/blob",
    ],
    "env": {"BENCH": "1"},
}
BOOT_SPEC = {
    **LAYER_SPEC,
    "start": "cd /opt/bench && exec python3 -m http.server 8000",
    "ready": {"cmd": "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/config.json')\"",
              "timeout": 30},
}  # fmt: skip


def create_kill(srv_url: str, key: str, template: str) -> float:
    t0 = time.perf_counter()
    sbx = Sandbox.create(template=template, base_url=srv_url, api_key=key)
    took = time.perf_counter() - t0
    sbx.kill()
    return took


def flatten_seconds() -> float:
    """The alternative not taken: copy the base tree (then the layer) into a new tree."""
    scratch = Path(tempfile.mkdtemp(dir=BENCH_ROOT))
    try:
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", f"{template_rootfs()}/.", str(scratch)], check=True)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    tag = os.getpid()
    layer, boot = f"bench-layer-{tag}", f"bench-boot-{tag}"
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    with running_server("templates") as srv, Templates(base_url=srv.url, api_key=srv.api_key) as t:
        try:
            t0 = time.perf_counter()
            built = t.build(layer, LAYER_SPEC)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            hit = t.build(layer, LAYER_SPEC)
            cached = time.perf_counter() - t0
            assert hit.cached and not built.cached
            t.build(boot, BOOT_SPEC)
            size = built.template.details.get("size_bytes") or 0
            print(f"build (cold, {size / 2**20:.1f} MiB layer){'':<11} {cold * 1000:10.1f} ms")
            print(f"build (cache hit, no sandbox){'':<16} {cached * 1000:10.1f} ms")
            samples: dict[str, list[float]] = {"base": [], layer: [], boot: []}
            for _ in range(N):
                # Interleaved, so that a busy moment of the host hits all three alike.
                for name, runs in samples.items():
                    runs.append(create_kill(srv.url, srv.api_key, name))
            print(summary("create from base", samples["base"]))
            print(summary("create from built (2 lower layers)", samples[layer]))
            print(summary("create from built + start + ready", samples[boot]))
        finally:
            for name in (boot, layer):
                t.delete(name)
    print(f"flatten alternative: copy of the base tree{'':<4} {flatten_seconds() * 1000:10.1f} ms")


if __name__ == "__main__":
    main()
