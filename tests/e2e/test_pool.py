"""The warm pool on the real runtime: a create served from the pool gets the
requested limits and hostname, the pool refills, members stay invisible to
tenants and survive a server restart.

Runs its own server (the session server has no pool, so that the leak check
after each module stays meaningful) and removes everything it made.
"""

from __future__ import annotations

import re
import sqlite3
import time

import httpx
import pytest

from tests.conftest import is_root, new_server
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")

MIB = 2**20
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def metric(api: httpx.Client, name: str, **labels: str) -> float:
    """One sample of the server's Prometheus metrics (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in api.get("/metrics").text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        if set(filter(None, (match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return 0.0


def wait_for_pool(api: httpx.Client, size: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(api, "sandbank_pool_size", template="base") != size:
        if time.monotonic() > deadline:
            raise AssertionError(f"the pool did not reach {size} in {timeout} s")
        time.sleep(0.05)


def pooled_ids(srv: ServerProcess) -> set[str]:
    with sqlite3.connect(srv.data_dir / "sandbank.db") as db:
        rows = db.execute("SELECT id FROM sandboxes WHERE status = 'pooled'").fetchall()
    return {row[0] for row in rows}


def run(api: httpx.Client, sandbox_id: str, command: str) -> list[str]:
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["exit_code"] == 0, out
    return str(out["stdout"]).split()


def test_pool_hit_is_a_working_sandbox_with_the_requested_limits() -> None:
    srv = new_server("pool", SANDBANK_POOL_SIZE="2")
    srv.start()
    try:
        with srv.client() as api:
            wait_for_pool(api, 2)
            members = pooled_ids(srv)
            assert len(members) == 2
            resp = api.post(
                "/v1/sandboxes",
                json={
                    "name": "warm-box",
                    "vcpu": 2,
                    "memory_mb": 1024,
                    "env": {"GREETING": "hello"},
                    "metadata": {"via": "pool"},
                    "timeout": 120,
                },
            )
            assert resp.status_code == 201, resp.text
            info = resp.json()
            assert info["id"] in members, "the create did not come from the pool"
            assert metric(api, "sandbank_pool_hits_total", template="base") == 1
            assert (info["name"], info["vcpu"], info["memory_mb"], info["status"]) == (
                "warm-box",
                2,
                1024,
                "running",
            )
            assert info["metadata"] == {"via": "pool"}
            # Members start with 1 vCPU, 512 MB and their own hostname.
            assert run(api, info["id"], "echo $GREETING; hostname; nproc") == [
                "hello",
                "warm-box",
                "2",
            ]
            usage = api.get(f"/v1/sandboxes/{info['id']}/metrics").json()
            assert usage["memory_limit_bytes"] == 1024 * MIB
            assert usage["pids_limit"] == 1024

            # The other member is nobody's: not listed, not found.
            (other,) = members - {info["id"]}
            assert api.get(f"/v1/sandboxes/{other}").status_code == 404
            assert api.delete(f"/v1/sandboxes/{other}").status_code == 404
            listed = api.get("/v1/sandboxes").json()["data"]
            assert [s["id"] for s in listed] == [info["id"]]
            bad = api.get("/v1/sandboxes", params={"status": "pooled"})
            assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"

            # The claim wakes a refill.
            wait_for_pool(api, 2)
            assert info["id"] not in pooled_ids(srv)
            assert api.delete(f"/v1/sandboxes/{info['id']}").status_code == 204

            # A create with the defaults is a hit too and keeps the member's shape.
            plain = api.post("/v1/sandboxes", json={}).json()
            assert metric(api, "sandbank_pool_hits_total", template="base") == 2
            assert run(api, plain["id"], "nproc; hostname") == ["1", f"sandbox-{plain['id'][:6]}"]
            # A disk size the pool does not keep starts cold.
            cold = api.post("/v1/sandboxes", json={"disk_gb": 2}).json()
            assert cold["id"] not in members
            assert (
                metric(api, "sandbank_pool_misses_total", template="base", reason="not_pooled") == 1
            )
            # Deleting while the refill starts a sandbox is fine too.
            for sandbox_id in (plain["id"], cold["id"]):
                assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
            wait_for_pool(api, 2)
            ready = pooled_ids(srv)

        # Pool members outlive the server, and the next start adopts them.
        srv.stop()
        srv.start()
        with srv.client() as api:
            wait_for_pool(api, 2)
            assert pooled_ids(srv) == ready
            again = api.post("/v1/sandboxes", json={"name": "after-restart"}).json()
            assert again["id"] in ready
            assert run(api, again["id"], "hostname") == ["after-restart"]
            assert api.delete(f"/v1/sandboxes/{again['id']}").status_code == 204
    finally:
        srv.stop()
        srv.purge()
