"""The /v1/sandboxes contract against the real server and runtime."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]


def test_health_and_metrics_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    resp = httpx.get(f"{server.url}/metrics")
    assert resp.status_code == 200
    assert "sandbank_sandboxes_created" in resp.text


def test_create_defaults_match_conway(api: httpx.Client, make_sandbox: Make) -> None:
    info = make_sandbox()
    assert info["status"] == "running"
    assert (info["vcpu"], info["memory_mb"], info["disk_gb"]) == (1, 512, 1)
    assert info["region"] == "eu-north"
    assert info["template"] == "base"
    assert info["short_id"].startswith("sbx-")
    assert f"/terminal/{info['id']}?token=" in info["terminal_url"]
    assert info["expires_at"] is not None
    got = api.get(f"/v1/sandboxes/{info['id']}").json()
    assert got["id"] == info["id"]
    listed = api.get("/v1/sandboxes").json()
    assert info["id"] in {s["id"] for s in listed["data"]}


def test_create_with_everything(api: httpx.Client, make_sandbox: Make) -> None:
    info = make_sandbox(
        name="my-dev-sandbox",
        cpu=2,
        memory_mb=1024,
        disk_gb=2,
        region="us-east",
        env={"GREETING": "hello"},
        metadata={"owner": "e2e"},
        timeout=120,
    )
    assert (info["name"], info["vcpu"], info["memory_mb"], info["disk_gb"]) == (
        "my-dev-sandbox",
        2,
        1024,
        2,
    )
    assert info["metadata"] == {"owner": "e2e"}
    out = api.post(
        f"/v1/sandboxes/{info['id']}/exec", json={"command": "echo $GREETING; hostname; nproc"}
    ).json()
    assert out["stdout"].split() == ["hello", "my-dev-sandbox", "2"]


def test_list_filters_and_pagination(api: httpx.Client, make_sandbox: Make) -> None:
    ids = [make_sandbox(metadata={"batch": "p1", "n": str(i)})["id"] for i in range(3)]
    page = api.get("/v1/sandboxes", params={"metadata[batch]": "p1", "limit": 2}).json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = api.get(
        "/v1/sandboxes",
        params={"metadata[batch]": "p1", "limit": 2, "cursor": page["next_cursor"]},
    ).json()
    assert [s["id"] for s in page["data"] + rest["data"]] == ids
    assert rest["next_cursor"] is None
    one = api.get("/v1/sandboxes", params={"metadata[n]": "1", "metadata[batch]": "p1"}).json()
    assert [s["id"] for s in one["data"]] == [ids[1]]
    running = api.get("/v1/sandboxes", params={"status": "running", "limit": 1000}).json()
    assert set(ids) <= {s["id"] for s in running["data"]}
    bad = api.get("/v1/sandboxes", params={"status": "sleepy"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    assert api.get("/v1/sandboxes", params={"cursor": "garbage!"}).status_code == 400


def test_delete_is_idempotent_and_gone_means_404(api: httpx.Client) -> None:
    sandbox_id = api.post("/v1/sandboxes", json={}).json()["id"]
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    resp = api.get(f"/v1/sandboxes/{sandbox_id}")
    assert resp.status_code == 404
    body = resp.json()
    assert body["code"] == "sandbox_not_found" and sandbox_id in body["message"]
    resp = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"cmd": ["true"]})
    assert resp.status_code == 404 and resp.json()["code"] == "sandbox_not_found"
    never = api.delete("/v1/sandboxes/neverexisted0000")
    assert never.status_code == 404 and never.json()["code"] == "sandbox_not_found"


def test_timeout_kills_and_says_so(api: httpx.Client) -> None:
    sandbox_id = api.post("/v1/sandboxes", json={"timeout": 1}).json()["id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        resp = api.get(f"/v1/sandboxes/{sandbox_id}")
        if resp.status_code == 404:
            break
        time.sleep(0.25)
    assert resp.status_code == 404
    assert "timeout" in resp.json()["message"]
    assert resp.json()["kill_reason"] == "timeout"
    killed = api.get("/v1/sandboxes", params={"status": "killed", "limit": 1000}).json()["data"]
    assert sandbox_id in {s["id"] for s in killed}


def test_set_timeout_moves_the_deadline(api: httpx.Client, sandbox: dict[str, Any]) -> None:
    before = sandbox["expires_at"]
    resp = api.post(f"/v1/sandboxes/{sandbox['id']}/timeout", json={"timeout": 3600})
    assert resp.status_code == 200
    assert resp.json()["expires_at"] > before
    for bad in (0, -5, 10**9, "soon"):
        resp = api.post(f"/v1/sandboxes/{sandbox['id']}/timeout", json={"timeout": bad})
        assert resp.status_code == 422, bad


def test_bad_create_input_is_rejected_and_creates_nothing(api: httpx.Client) -> None:
    before = len(api.get("/v1/sandboxes", params={"limit": 1000}).json()["data"])
    cases: list[tuple[Any, int, str]] = [
        ({"template": "nope"}, 404, "template_not_found"),
        ({"vcpu": 0}, 422, "invalid_request"),
        ({"vcpu": 99}, 422, "invalid_request"),
        ({"memory_mb": 1}, 422, "invalid_request"),
        ({"memory_mb": 10**9}, 422, "invalid_request"),
        ({"disk_gb": 0}, 422, "invalid_request"),
        ({"timeout": -1}, 422, "invalid_request"),
        ({"timeout": 10**12}, 422, "invalid_request"),
        ({"region": "mars"}, 422, "invalid_request"),
        ({"surprise": True}, 422, "invalid_request"),
        ({"metadata": {"k": 5}}, 422, "invalid_request"),
        ({"env": {"1BAD": "x"}}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        resp = api.post("/v1/sandboxes", json=body)
        assert (resp.status_code, resp.json()["code"]) == (status, code), (body, resp.text)
        assert resp.json()["message"]
    resp = api.post(
        "/v1/sandboxes", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request"
    assert "template" in api.post("/v1/sandboxes", json={"template": "nope"}).json()["message"]
    for odd in ("UPPER", "a%24b", "x" * 65, "..", "a b"):
        resp = api.get(f"/v1/sandboxes/{odd}")
        assert resp.status_code in (404, 422), odd
        assert "code" in resp.json()
    after = len(api.get("/v1/sandboxes", params={"limit": 1000}).json()["data"])
    assert after == before


def test_auth(server: ServerProcess, api: httpx.Client, sandbox: dict[str, Any]) -> None:
    assert httpx.get(f"{server.url}/v1/sandboxes").status_code == 401
    resp = httpx.get(f"{server.url}/v1/sandboxes", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    resp = httpx.get(f"{server.url}/v1/sandboxes", headers={"X-API-Key": server.api_key})
    assert resp.status_code == 200
    created = api.post("/v1/keys", json={"tenant": "revokee"}).json()
    key = created["key"]
    assert "key_hash" not in created
    assert httpx.get(f"{server.url}/v1/sandboxes", headers={"X-API-Key": key}).status_code == 200
    assert api.delete(f"/v1/keys/{created['id']}").status_code == 204
    assert httpx.get(f"{server.url}/v1/sandboxes", headers={"X-API-Key": key}).status_code == 401
    # Keys are stored hashed: the clear key appears nowhere in the database.
    db = (server.data_dir / "sandbank.db").read_bytes()
    assert key.encode() not in db


def test_tenants_never_see_each_other(
    server: ServerProcess, api: httpx.Client, sandbox: dict[str, Any]
) -> None:
    other = api.post("/v1/keys", json={"tenant": "other-tenant"}).json()["key"]
    with server.client(other) as them:
        for method, path in [
            ("GET", f"/v1/sandboxes/{sandbox['id']}"),
            ("DELETE", f"/v1/sandboxes/{sandbox['id']}"),
            ("POST", f"/v1/sandboxes/{sandbox['id']}/timeout"),
            ("GET", f"/v1/sandboxes/{sandbox['id']}/files?path=/etc/hostname"),
            ("GET", f"/v1/sandboxes/{sandbox['id']}/metrics"),
        ]:
            resp = them.request(method, path, json={"timeout": 5} if method == "POST" else None)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["code"] == "sandbox_not_found"
        assert sandbox["id"] not in {s["id"] for s in them.get("/v1/sandboxes").json()["data"]}
        assert them.post("/v1/keys", json={"tenant": "x"}).status_code == 403
    assert api.get(f"/v1/sandboxes/{sandbox['id']}").status_code == 200


def test_quota_exceeded_names_the_limit(server: ServerProcess, api: httpx.Client) -> None:
    key = api.post("/v1/keys", json={"tenant": "small"}).json()["key"]
    quota = api.put("/v1/tenants/small/quota", json={"max_sandboxes": 1, "max_vcpu": 2})
    assert quota.status_code == 200
    with server.client(key) as small:
        first = small.post("/v1/sandboxes", json={})
        assert first.status_code == 201
        try:
            second = small.post("/v1/sandboxes", json={})
            assert second.status_code == 429
            body = second.json()
            assert body["code"] == "quota_exceeded" and body["limit"] == "max_sandboxes"
            assert "1 of 1" in body["message"]
        finally:
            small.delete(f"/v1/sandboxes/{first.json()['id']}")
        api.put("/v1/tenants/small/quota", json={"max_sandboxes": 5, "max_vcpu": 2})
        big = small.post("/v1/sandboxes", json={"vcpu": 3})
        assert big.status_code == 429 and big.json()["limit"] == "max_vcpu"


def test_fifty_parallel_clients_leave_the_store_consistent(
    server: ServerProcess, api: httpx.Client
) -> None:
    key = api.post("/v1/keys", json={"tenant": "crowd"}).json()["key"]
    api.put("/v1/tenants/crowd/quota", json={"max_sandboxes": 60, "max_vcpu": 60})

    def lifecycle(i: int) -> str:
        with server.client(key) as c:
            resp = c.post("/v1/sandboxes", json={"metadata": {"i": str(i)}})
            assert resp.status_code == 201, resp.text
            sandbox_id = resp.json()["id"]
            out = c.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"cmd": ["echo", str(i)]})
            assert out.json()["stdout"] == f"{i}\n", out.text
            assert c.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
            return sandbox_id

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        ids = list(pool.map(lifecycle, range(50)))
    assert len(set(ids)) == 50
    with server.client(key) as c:
        assert c.get("/v1/sandboxes").json()["data"] == []
        killed = c.get("/v1/sandboxes", params={"status": "killed", "limit": 100}).json()["data"]
        assert {s["id"] for s in killed} == set(ids)
