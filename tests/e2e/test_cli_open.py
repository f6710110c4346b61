"""``sandbank open ID PORT`` and the SDK's ``get_host``, against the real server:
the URL printed reaches a port inside the sandbox without any other credential."""

from __future__ import annotations

import httpx

from sandbank import Sandbox
from tests.e2e.test_cli import sandbank
from tests.support.server import ServerProcess

#: Answers every request with "port 8000 says <path>".
APP = (
    "setsid python3 -c '"
    "import http.server as h\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    '        b = ("port 8000 says " + self.path.split("?")[0]).encode()\n'
    '        self.send_response(200); self.send_header("Content-Length", str(len(b)))\n'
    "        self.end_headers(); self.wfile.write(b)\n"
    'h.HTTPServer(("0.0.0.0", 8000), H).serve_forever()'
    "' >/dev/null 2>&1 </dev/null & "
    "for i in $(seq 50); do python3 -c 'import socket; "
    'socket.create_connection(("127.0.0.1", 8000), 0.2)\' 2>/dev/null && exit 0; '
    "sleep 0.1; done; exit 1"
)


def test_open_prints_a_working_preview_url(
    server: ServerProcess, client_env: dict[str, str]
) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sbx:
        try:
            assert sbx.commands.run(APP).exit_code == 0
            proc = sandbank(client_env, "open", sbx.sandbox_id, "8000")
            assert proc.returncode == 0, proc.stderr
            url = proc.stdout.strip()
            assert url.startswith(f"{server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8000/")
            with httpx.Client(timeout=30) as anon:  # the URL alone is enough
                resp = anon.get(url)
                assert (resp.status_code, resp.text) == (200, "port 8000 says /")

                proc = sandbank(client_env, "open", "--host", sbx.sandbox_id, "8000")
                assert proc.returncode == 0, proc.stderr
                by_host = httpx.URL(proc.stdout.strip())
                host = sbx.get_host(8000)
                assert host == f"8000-{sbx.sandbox_id}.localhost:{server.port}"
                assert by_host.netloc.decode() == host
                # *.localhost is the loopback: send it there with its Host header.
                resp = anon.get(
                    f"{server.url}/there?{by_host.query.decode()}", headers={"Host": host}
                )
                assert (resp.status_code, resp.text) == (200, "port 8000 says /there")
        finally:
            sbx.kill()


def test_open_refuses_bad_ports_and_unknown_sandboxes(client_env: dict[str, str]) -> None:
    proc = sandbank(client_env, "open", "sbx-nope", "0")
    assert proc.returncode == 2 and "greater than or equal to 1" in proc.stderr
    proc = sandbank(client_env, "open", "sbxnotthere123", "8000")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: "), proc.stderr
