"""Domain rules through the real server process (its event loop, its
settings): a server of this module's own whose resolver is the fake
internet's, so no name is ever sent to a real resolver."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sandbank import Sandbox
from sandbank.client import ALL_TRAFFIC
from tests.conftest import is_root, new_server
from tests.support.fakenet import FETCH, WEB, FakeInternet
from tests.support.server import ServerProcess

CA = "/home/user/test-ca.pem"


@pytest.fixture(scope="module")
def internet() -> Iterator[FakeInternet]:
    net = FakeInternet().open()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def dns_server(internet: FakeInternet) -> Iterator[ServerProcess]:
    if not is_root():
        pytest.skip("the real server needs root")
    srv = new_server("netdomains", SANDBANK_NETWORK_DNS=json.dumps([WEB]))
    srv.start()
    yield srv
    srv.stop()
    srv.purge()


def fetch(sbx: Sandbox, *targets: str) -> dict[str, bool]:
    out = sbx.commands.run(["python3", "-c", FETCH, CA, *targets])
    assert out.exit_code == 0, out.stderr
    return {t: r.startswith("ok") for t, r in json.loads(out.stdout).items()}


def test_allow_list_then_deny_list_of_names(
    dns_server: ServerProcess, internet: FakeInternet
) -> None:
    with Sandbox.create(
        network={"allow_out": ["web.test"], "deny_out": [ALL_TRAFFIC]},
        base_url=dns_server.url,
        api_key=dns_server.api_key,
    ) as sbx:
        try:
            sbx.files.write(CA, internet.ca_pem)
            assert fetch(sbx, "https:web.test", "https:shared.test", "http:other.test") == {
                "https:web.test": True, "https:shared.test": False, "http:other.test": False,
            }  # fmt: skip
            sbx.update_network(deny_out=["web.test"])
            assert fetch(sbx, "https:web.test", "https:shared.test", "http:other.test") == {
                "https:web.test": False, "https:shared.test": True, "http:other.test": True,
            }  # fmt: skip
        finally:
            sbx.kill()
