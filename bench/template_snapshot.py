"""A template from a snapshot, against a template built from a spec with the
same layer, in the same run.

A sandbox writes the layer templates.py builds (~2000 small files and a
16 MiB file), is snapshotted, and the snapshot becomes a template: printed
are the snapshot, the template from it (mount the image read-only, copy its
upper dir, unmount), the cache hit, the build of the same layer from a spec
(the baseline: a build sandbox, the steps, the capture), and create p50 from
``base`` and from the snapshot's template.
"""

from __future__ import annotations

import os
import time

from _common import BENCH_ROOT, running_server, summary
from templates import LAYER_SPEC, create_kill

from sandbank import Sandbox, Snapshots, Templates

N = 10


def main() -> None:
    tag = os.getpid()
    from_snap, from_spec = f"bench-fromsnap-{tag}", f"bench-fromspec-{tag}"
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    with running_server("tsnap") as srv, Templates(base_url=srv.url, api_key=srv.api_key) as t:
        made: list[str] = []
        snap_id = ""
        try:
            with Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sbx:
                for step in LAYER_SPEC["run"]:
                    sbx.commands.run(step, user="root", timeout=300)
                t0 = time.perf_counter()
                snap_id = sbx.snapshot().id
                took_snap = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = t.from_snapshot(snap_id, from_snap)
            made.append(from_snap)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert t.from_snapshot(snap_id, from_snap).cached
            hit = time.perf_counter() - t0
            t0 = time.perf_counter()
            t.build(from_spec, LAYER_SPEC)
            made.append(from_spec)
            built = time.perf_counter() - t0
            size = result.template.details.get("size_bytes") or 0
            print(f"snapshot of the sandbox{'':<22} {took_snap * 1000:10.1f} ms")
            label = f"template from snapshot ({size / 2**20:.1f} MiB layer)"
            print(f"{label:<45} {cold * 1000:10.1f} ms")
            print(f"template from snapshot (cache hit){'':<11} {hit * 1000:10.1f} ms")
            print(f"baseline: build of the same layer{'':<12} {built * 1000:10.1f} ms")
            samples: dict[str, list[float]] = {"base": [], from_snap: []}
            for _ in range(N):
                for name, runs in samples.items():
                    runs.append(create_kill(srv.url, srv.api_key, name))
            print(summary("create from base", samples["base"]))
            print(summary("create from snapshot template", samples[from_snap]))
        finally:
            for name in reversed(made):
                t.delete(name)
            if snap_id:
                with Snapshots(base_url=srv.url, api_key=srv.api_key) as snapshots:
                    snapshots.delete(snap_id)


if __name__ == "__main__":
    main()
