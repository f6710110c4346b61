"""The leak check's network part finds what a sandbox of a remembered data dir
left, and nothing of others (in a throwaway network namespace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import hashlib, json, subprocess
from pathlib import Path
from sandbank.protocol.network import NetworkPolicy
from sandbank.runtime.linux import netrules
from sandbank.runtime.linux.nft import Nft
from tests.support.leaks import network_leftovers

ours, theirs = Path("/data/ours"), Path("/data/theirs")
def tag(d):
    return hashlib.sha256(str(d).encode()).hexdigest()[:8]
nft = Nft()
nft.run_sync(netrules.base_table())
for name, d in (("0123456789ab", ours), ("ba9876543210", theirs)):
    names = netrules.Names(name)
    label = f"sandbank:{tag(d)}:sbx-{name[:4]}"
    nft.run_sync(netrules.add_sandbox(names, NetworkPolicy(), None, None, label))
    subprocess.run(["ip", "link", "add", names.veth, "type", "veth", "peer", "name", "p" + name],
                   check=True)
    subprocess.run(["ip", "link", "set", names.veth, "alias", label], check=True)
before = network_leftovers({ours})
for name in ("0123456789ab",):
    names = netrules.Names(name)
    nft.run_sync(netrules.remove_sandbox(names))
    subprocess.run(["ip", "link", "del", names.veth], check=True)
print(json.dumps([before, network_leftovers({ours})]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_leftover_links_and_members_of_our_data_dirs_are_found() -> None:
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert len(before) == 2, before
    assert any(x.startswith("network link sbk0123456789ab of sandbank:") for x in before)
    assert any(x.startswith("nft set ifaces element sbk0123456789ab") for x in before)
    assert not any("ba9876543210" in x for x in before)
    assert after == []
