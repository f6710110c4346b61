"""Downloads served from the host (runtime/linux/hostread.py): they answer what
the agent would, never leave the sandbox, and never keep a sandbox's disk busy."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbank.runtime.linux import hostread
from sandbank.runtime.linux.oci import ID_RANGE, ID_SHIFT


def url(box: dict[str, Any]) -> str:
    return f"/v1/sandboxes/{box['id']}/files"


def run(api: httpx.Client, box: dict[str, Any], command: str, user: str = "user") -> str:
    resp = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"command": command, "user": user})
    assert resp.status_code == 200 and resp.json()["exit_code"] == 0, resp.text
    return str(resp.json()["stdout"])


def host_open(server: Any, box: dict[str, Any], path: str) -> bytes | None:
    """What the host-side open gives for ``path`` (None: the agent serves it)."""
    state = json.loads((server.data_dir / "runc" / box["id"] / "state.json").read_text())
    agent = (state["init_process_pid"], state["init_process_start"])
    sock = server.data_dir / "sandboxes" / box["id"] / "run" / "agent.sock"
    fd = hostread.open_for_read(agent, sock, path, ID_SHIFT, ID_RANGE)
    if fd is None:
        return None
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def test_same_answers_as_the_agent_and_nothing_outside(
    server: Any, api: httpx.Client, sandbox: dict[str, Any]
) -> None:
    marker = Path("/tmp") / f"host-secret-{secrets.token_hex(4)}"
    marker.write_text("host only")
    try:
        run(
            api,
            sandbox,
            f"echo hi > ~/a.txt; ln -s /etc/hostname ~/abs; ln -s ../../../../../..{marker} ~/up;"
            " ln -s /proc/1/root ~/magic; mkfifo ~/fifo; echo shm > /dev/shm/s",
        )
        run(api, sandbox, "echo secret > /root/only-root; chmod 600 /root/only-root", user="root")
        hostname = run(api, sandbox, "cat /etc/hostname").encode()
        cases = {
            "/home/user/a.txt": b"hi\n",  # served from the host
            "/home/user/abs": hostname,  # an absolute symlink stays inside
            "/home/user/../../../../etc/hostname": hostname,  # so does ..
            "/root/only-root": b"secret\n",  # the agent reads as the sandbox's root
            "/home/user/magic/etc/hostname": hostname,  # a /proc magic link: the agent's
            "/dev/shm/s": b"shm\n",  # another mount: the agent's
        }
        for path, want in cases.items():
            resp = api.get(url(sandbox), params={"path": path})
            assert (resp.status_code, resp.content) == (200, want), path
        # Served from the host, the length is known up front; through the agent it is not.
        small = api.get(url(sandbox), params={"path": "/home/user/a.txt"})
        assert small.headers.get("content-length") == "3"
        shm = api.get(url(sandbox), params={"path": "/dev/shm/s"})
        assert shm.headers.get("transfer-encoding") == "chunked"
        assert api.get(url(sandbox), params={"path": "/home/user/up"}).status_code == 404
        assert api.get(url(sandbox), params={"path": marker}).status_code == 404
        assert api.get(url(sandbox), params={"path": "/home/user/fifo"}).status_code == 400
        assert api.get(url(sandbox), params={"path": "/home/user"}).status_code == 400

        # Which reads the host takes, and which it leaves to the agent.
        assert host_open(server, sandbox, "/home/user/a.txt") == b"hi\n"
        assert host_open(server, sandbox, "/home/user/abs") == hostname
        assert host_open(server, sandbox, "/root/only-root") == b"secret\n"
        for path in (
            "/home/user/magic/etc/hostname",
            "/proc/1/status",
            "/dev/shm/s",
            "/home/user/fifo",
            "/home/user/up",
            "/home/user",
            "a.txt",
        ):
            assert host_open(server, sandbox, path) is None, path
    finally:
        marker.unlink()


def test_a_stalled_download_does_not_keep_the_sandbox(api: httpx.Client, make_sandbox: Any) -> None:
    box = make_sandbox()
    run(api, box, "head -c 50000000 /dev/zero > ~/big")
    with (
        httpx.Client(base_url=str(api.base_url), headers=api.headers, timeout=30) as other,
        other.stream("GET", url(box), params={"path": "/home/user/big"}) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_raw(1 << 16)
        next(chunks)  # then stall, the file open on the server
        assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204
        with pytest.raises(httpx.HTTPError):  # the rest never comes whole
            for _ in chunks:
                pass
