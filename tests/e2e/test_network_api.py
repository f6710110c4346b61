"""The network policy through the REST API and the SDK, on the real server.

Traffic only goes to the test's own fake internet (``tests.support.fakenet``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sandbank.client import ALL_TRAFFIC, NetworkInfo, Sandbox
from sandbank.protocol.network import MAX_ENTRIES
from tests.support.fakenet import OTHER, PORT, WEB, FakeInternet
from tests.support.server import ServerProcess

Make = Callable[..., dict[str, Any]]

PROBE = (
    "import socket,sys\n"
    "for t in sys.argv[1:]:\n"
    "    h, p = t.rsplit(':', 1)\n"
    "    try:\n"
    "        socket.create_connection((h, int(p)), timeout=1.5).close(); print(t, 'ok')\n"
    "    except OSError as e:\n"
    "        print(t, 'fail')\n"
)


@pytest.fixture(scope="module")
def internet() -> Iterator[FakeInternet]:
    net = FakeInternet().open()
    try:
        yield net
    finally:
        net.close()


def reach(api: httpx.Client, sandbox_id: str) -> dict[str, bool]:
    targets = [f"{WEB}:{PORT}", f"{OTHER}:{PORT}"]
    resp = api.post(
        f"/v1/sandboxes/{sandbox_id}/exec", json={"cmd": ["python3", "-c", PROBE, *targets]}
    )
    assert resp.status_code == 200, resp.text
    lines = dict(line.split() for line in resp.json()["stdout"].splitlines())
    return {t.split(":")[0]: lines[t] == "ok" for t in targets}


def test_create_with_a_policy_then_change_it(
    api: httpx.Client, make_sandbox: Make, internet: FakeInternet
) -> None:
    box = make_sandbox(network={"deny_out": [ALL_TRAFFIC], "allow_out": [WEB]})
    assert box["network"] == {
        "allow_internet_access": True,
        "allow_out": [f"{WEB}/32"],
        "deny_out": ["0.0.0.0/0"],
    }
    assert reach(api, box["id"]) == {WEB: True, OTHER: False}

    path = f"/v1/sandboxes/{box['id']}/network"
    resp = api.put(path, json={"deny_out": [f"{WEB}/32"]})
    assert resp.status_code == 200, resp.text
    assert reach(api, box["id"]) == {WEB: False, OTHER: True}
    assert api.get(path).json() == resp.json()
    assert api.get(f"/v1/sandboxes/{box['id']}").json()["network"] == resp.json()

    assert api.put(path, json={"allow_internet_access": False}).status_code == 200
    assert reach(api, box["id"]) == {WEB: False, OTHER: False}


def test_no_internet_at_create(
    api: httpx.Client, make_sandbox: Make, internet: FakeInternet
) -> None:
    box = make_sandbox(allow_internet_access=False)
    assert box["network"]["allow_internet_access"] is False
    assert reach(api, box["id"]) == {WEB: False, OTHER: False}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"network": {"deny_out": ["10.0.0.300"]}}, "'10.0.0.300' is not an IPv4"),
        ({"network": {"allow_out": ["ok.example", "bad_.*.example"]}}, "'bad_.*.example' is"),
        ({"network": {"deny_out": ["fd00::/8"]}}, "IPv6"),
        (
            {"allow_internet_access": False, "network": {"allow_out": ["1.1.1.1"]}},
            "allow_out has no effect",
        ),
        (
            {
                "network": {
                    "deny_out": [f"10.0.{i // 256}.{i % 256}" for i in range(MAX_ENTRIES + 1)]
                }
            },
            f"at most {MAX_ENTRIES}",
        ),
        ({"network": {"drop": []}}, "unknown field"),
    ],
)
def test_bad_policies_are_refused_and_create_nothing(
    api: httpx.Client, body: dict[str, Any], says: str
) -> None:
    before = len(api.get("/v1/sandboxes").json()["data"])
    resp = api.post("/v1/sandboxes", json=body)
    assert resp.status_code == 422, resp.text
    assert says in resp.json()["message"]
    assert len(api.get("/v1/sandboxes").json()["data"]) == before


def test_bad_update_is_refused_and_keeps_the_policy(
    api: httpx.Client, sandbox: dict[str, Any]
) -> None:
    path = f"/v1/sandboxes/{sandbox['id']}/network"
    resp = api.put(path, json={"deny_out": ["1.2.3.4/40"]})
    assert resp.status_code == 422
    assert "'1.2.3.4/40'" in resp.json()["message"]
    assert api.get(path).json() == {"allow_internet_access": True, "allow_out": [], "deny_out": []}


def test_other_tenants_and_killed_sandboxes_are_not_found(
    server: ServerProcess, api: httpx.Client, make_sandbox: Make
) -> None:
    box = make_sandbox()
    path = f"/v1/sandboxes/{box['id']}/network"
    other = api.post("/v1/keys", json={"tenant": "net-other"}).json()["key"]
    with server.client(other) as them:
        assert them.put(path, json={}).status_code == 404
        assert them.get(path).status_code == 404
    assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204
    resp = api.put(path, json={})
    assert resp.status_code == 404 and resp.json()["code"] == "sandbox_not_found"


def test_sdk(server: ServerProcess, internet: FakeInternet) -> None:
    with Sandbox.create(
        network={"deny_out": [OTHER]}, api_key=server.api_key, base_url=server.url
    ) as sbx:
        assert sbx.info.network == NetworkInfo(True, [], [f"{OTHER}/32"])
        info = sbx.update_network(allow_internet_access=False)
        assert info == NetworkInfo(False, [], [])
        assert sbx.get_network() == info
        out = sbx.commands.run(["python3", "-c", PROBE, f"{WEB}:{PORT}"])
        assert out.stdout.split() == [f"{WEB}:{PORT}", "fail"]


def test_domain_entries_through_the_api(
    api: httpx.Client, make_sandbox: Make, internet: FakeInternet
) -> None:
    """Domain entries are kept (in lower case) next to addresses. Nothing here
    resolves a name: an address no allowed name resolved to stays closed."""
    box = make_sandbox(
        network={"deny_out": [ALL_TRAFFIC], "allow_out": ["Web.Test.", "*.wild.test", OTHER]}
    )
    assert box["network"]["allow_out"] == ["web.test", "*.wild.test", f"{OTHER}/32"]
    assert reach(api, box["id"]) == {WEB: False, OTHER: True}
    path = f"/v1/sandboxes/{box['id']}/network"
    resp = api.put(path, json={"deny_out": ["web.test"]})
    assert resp.status_code == 200, resp.text
    assert api.get(path).json()["deny_out"] == ["web.test"]
    assert reach(api, box["id"]) == {WEB: True, OTHER: True}
    resp = api.put(path, json={"allow_out": ["*.*.test"], "deny_out": [ALL_TRAFFIC]})
    assert resp.status_code == 422 and "'*.*.test'" in resp.json()["message"]
