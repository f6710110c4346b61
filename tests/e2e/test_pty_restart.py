"""A terminal lives in the sandbox's agent: kill -9 of the server does not end
it, and a client reconnects afterwards with its output replayed."""

from __future__ import annotations

import signal

import pytest

from sandbank import Sandbox
from tests.conftest import is_root, new_server, run_cgroups
from tests.e2e.test_pty import read_until
from tests.support.leaks import leftovers

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root")


def test_a_terminal_survives_a_server_restart() -> None:
    srv = new_server("pty-restart")
    srv.start()
    try:
        with Sandbox.create(api_key=srv.api_key, base_url=srv.url, timeout=600) as sbx:
            handle = sbx.pty.create()
            handle.send_input("cd /tmp; echo kept-$((6*7))\n")
            read_until(handle, r"kept-42")
            pid = handle.pid
            # No disconnect: the server dies under an open session.
            srv.stop(signal.SIGKILL)
            srv.start()
            again = Sandbox.connect(sbx.sandbox_id, api_key=srv.api_key, base_url=srv.url)
            try:
                assert again.pty.get(pid).running
                after = again.pty.connect(pid)
                read_until(after, r"kept-42")  # replayed from before the restart
                after.send_input("echo $(pwd)-$((1+1))\n")
                read_until(after, r"/tmp-2")  # the same shell, still in /tmp
                after.send_input("exit 5\n")
                assert after.wait().exit_code == 5
                after.disconnect()
            finally:
                again.close()
            handle.disconnect()
        assert leftovers(srv.data_dir, run_cgroups()) == []
    finally:
        srv.stop()
        srv.purge()
