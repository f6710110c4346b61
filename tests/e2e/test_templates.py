"""Templates on the real server: a build from a spec (apt and pip from sources
the test serves in its own fake internet), the cache, a failing step, aliases,
deletion, sandboxes of a built template (env, start command, ready check),
and an OCI image import."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbank.client import Sandbox, Templates
from sandbank.errors import TemplateBuildFailed, TemplateNotFound
from tests.conftest import TEMPLATES, new_server, run_cgroups
from tests.support import ociimage
from tests.support.leaks import leftovers
from tests.support.packages import DEB, PackageHost, make_apt_repo, make_pip_index

Make = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("pkgs")
    root.chmod(0o755)
    host = PackageHost(root)
    apt_line, index = make_apt_repo(root, host.url), make_pip_index(root, host.url)
    host.open()
    try:
        yield {"apt": apt_line, "pip": index}
    finally:
        host.close()
    assert not host.leftovers()


@pytest.fixture(scope="module")
def names(server: Any) -> Iterator[list[str]]:
    """Templates a test made, deleted at the end (the templates dir is shared)."""
    made: list[str] = []
    yield made
    with server.client() as api:
        for name in reversed(made):
            resp = api.delete(f"/v1/templates/{name}")
            assert resp.status_code in (204, 404), resp.text


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def build(api: httpx.Client, name: str, spec: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    body = {"name": name, "spec": spec, **extra}
    with api.stream("POST", "/v1/templates", json=body, timeout=900) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in resp.iter_lines() if line]


def app_spec(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "apt": [DEB],
        "apt_sources": [sources["apt"]],
        "pip": ["sbk-pkg"],
        "pip_index_url": sources["pip"],
        "files": {
            "/opt/app/greet.txt": {"content": "hi from the template\n", "mode": "0644"},
            "/opt/app/conf.ini": "plain=1\n",
        },
        "run": ["echo built > /opt/app/built", {"run": "id -un > /home/user/who", "user": "user"}],
        "env": {"GREETING": "hello"},
        "start": "cd /opt/app && exec python3 -m http.server 8000",
        "ready": {"cmd": "curl -sf http://127.0.0.1:8000/greet.txt", "timeout": 30},
    }


def test_build_then_sandboxes_of_it(
    api: httpx.Client, make_sandbox: Make, sources: dict[str, str], names: list[str]
) -> None:
    name = unique("app")
    names.append(name)
    events = build(api, name, app_spec(sources), aliases=[f"{name}:1"])
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "result", "\n".join(
        str(e.get("line") or e) for e in events if e.get("step") == 2
    )
    steps = [e["title"] for e in events if e["type"] == "step"]
    assert steps[0] == f"apt install {DEB}" and steps[1] == "pip install sbk-pkg"
    assert [e["total"] for e in events if e["type"] == "step"] == [len(steps)] * len(steps)
    lines = [e["line"] for e in events if e["type"] == "log"]
    assert any(f"Setting up {DEB}" in line for line in lines), lines[-30:]
    assert any("Successfully installed sbk-pkg" in line for line in lines), lines[-30:]
    result = events[-1]
    assert result["cached"] is False
    tmpl = result["template"]
    assert tmpl["kind"] == "built" and tmpl["base"] == "base" and tmpl["ready"]
    assert tmpl["aliases"] == [f"{name}:1"] and tmpl["env"] == {"GREETING": "hello"}

    listed = {t["name"]: t for t in api.get("/v1/templates").json()["data"]}
    assert listed[name]["recipe_hash"] == tmpl["recipe_hash"]
    assert api.get(f"/v1/templates/{name}:1").json()["name"] == name

    # Same spec again: the cache answers, no build sandbox is started.
    again = build(api, name, app_spec(sources))
    assert [e["type"] for e in again] == ["result"] and again[0]["cached"] is True
    assert again[0]["template"]["recipe_hash"] == tmpl["recipe_hash"]

    box = make_sandbox(template=f"{name}:1", env={"EXTRA": "1"})
    assert box["template"] == name
    base = f"/v1/sandboxes/{box['id']}"
    # The ready check passed before the create returned: the server answers at once.
    probe = "curl -sf http://127.0.0.1:8000/greet.txt; echo $GREETING $EXTRA; " \
        f"{DEB}; python3 -c 'import sbk_pkg; print(sbk_pkg.VALUE)'; " \
        "cat /opt/app/built /home/user/who; stat -c %a /opt/app/greet.txt"  # fmt: skip
    out = api.post(f"{base}/exec", json={"command": probe}).json()
    assert out["stdout"].split("\n")[:7] == [
        "hi from the template", "hello 1", "hello-from-deb", "42", "built", "user", "644",
    ], out  # fmt: skip
    procs = api.get(f"{base}/processes").json()["processes"]
    started = [p for p in procs if p["tag"] == "template-start"]
    assert len(started) == 1 and started[0]["running"], procs
    assert "http.server" in " ".join(started[0]["cmd"])

    # In use: not deletable; the build's own hostname/resolver are not inherited.
    refused = api.delete(f"/v1/templates/{name}")
    assert refused.status_code == 409 and box["id"] in refused.json()["sandboxes"], refused.text
    by_alias = api.delete(f"/v1/templates/{name}:1")
    assert by_alias.status_code == 409 and "alias" in by_alias.json()["message"]
    hosts = api.post(f"{base}/exec", json={"command": "cat /etc/hostname"}).json()
    assert hosts["stdout"].strip() != "template-build"
    assert api.delete(base).status_code == 204
    assert api.delete(f"/v1/templates/{name}").status_code == 204
    gone = api.get(f"/v1/templates/{name}")
    assert gone.status_code == 404 and gone.json()["code"] == "template_not_found"
    assert api.get(f"/v1/templates/{name}:1").status_code == 404
    assert not (TEMPLATES / name).exists()


def test_failing_apt_package_leaves_nothing(
    api: httpx.Client, sources: dict[str, str], names: list[str]
) -> None:
    name = unique("broken")
    names.append(name)
    spec = {"apt": ["sbk-no-such-package"], "apt_sources": [sources["apt"]]}
    events = build(api, name, spec)
    last = events[-1]
    assert last["type"] == "error" and last["code"] == "template_build_failed", last
    assert "Unable to locate package sbk-no-such-package" in last["message"]
    logged = [e["line"] for e in events if e["type"] == "log"]
    assert any("Unable to locate package sbk-no-such-package" in line for line in logged)
    assert api.get(f"/v1/templates/{name}").status_code == 404
    assert not (TEMPLATES / name).exists()


def test_ready_check_that_never_passes_fails_the_create(
    api: httpx.Client, names: list[str]
) -> None:
    name = unique("never")
    names.append(name)
    spec = {"start": "sleep 600", "ready": {"cmd": "test -e /tmp/never", "timeout": 1.5}}
    assert build(api, name, spec)[-1]["type"] == "result"
    resp = api.post("/v1/sandboxes", json={"template": name})
    assert resp.status_code == 504, resp.text
    body = resp.json()
    assert body["code"] == "sandbox_not_ready" and "test -e /tmp/never" in body["message"]
    listed = api.get("/v1/sandboxes", params={"status": "running"}).json()["data"]
    assert all(b["template"] != name for b in listed)


def test_unknown_names_and_aliases(api: httpx.Client) -> None:
    missing = api.get("/v1/templates/no-such-template")
    assert missing.status_code == 404
    assert missing.json()["code"] == "template_not_found"
    assert "base" in missing.json()["templates"] and "base" in missing.json()["message"]
    create = api.post("/v1/sandboxes", json={"template": "no-such-template"})
    assert create.status_code == 404 and "base" in create.json()["templates"]

    alias = unique("py") + ":3.11"
    made = api.post("/v1/templates/base/aliases", json={"alias": alias})
    assert made.status_code == 200 and alias in made.json()["aliases"]
    assert api.get(f"/v1/templates/{alias}").json()["name"] == "base"
    dropped = api.delete(f"/v1/templates/base/aliases/{alias}")
    assert dropped.status_code == 204
    assert api.get(f"/v1/templates/{alias}").status_code == 404
    assert api.delete(f"/v1/templates/base/aliases/{alias}").status_code == 404
    bad = api.post("/v1/templates/base/aliases", json={"alias": "Bad Alias"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    clash = api.post("/v1/templates/base/aliases", json={"alias": "base"})
    assert clash.status_code == 409
    assert api.delete("/v1/templates/base").status_code == 409
    bad_name = api.post("/v1/templates", json={"name": "Not/Valid", "spec": {}})
    assert bad_name.status_code == 422


def test_import_oci_layout(
    server: Any, api: httpx.Client, make_sandbox: Make, names: list[str], tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    base_rootfs = TEMPLATES / "base" / "current" / "rootfs"
    archive = tmp_path / "image.tar"
    config = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "IMG_VAR=yes"],
              "WorkingDir": "/srv", "Cmd": ["python3"]}  # fmt: skip
    ociimage.write_oci_tar(
        archive, [ociimage.python_layer(base_rootfs), ociimage.second_layer], config
    )
    name = unique("img")
    names.append(name)
    resp = api.post("/v1/templates/import", json={"name": name, "path": str(archive)})
    assert resp.status_code == 201, resp.text
    tmpl = resp.json()
    assert tmpl["kind"] == "image" and tmpl["env"]["IMG_VAR"] == "yes"
    assert tmpl["workdir"] == "/srv" and tmpl["cmd"] == ["python3"]

    box = make_sandbox(template=name)
    run = api.post(
        f"/v1/sandboxes/{box['id']}/exec",
        json={"cmd": ["python3", "-c",
                      "import os; print(os.environ['IMG_VAR'], open('/etc/motd').read().strip(),"
                      " os.path.exists('/etc/removed-later'), os.getuid())"]},
    )  # fmt: skip
    assert run.status_code == 200, run.text
    assert run.json()["stdout"] == "yes from layer two False 1000\n", run.json()
    assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204

    # The same archive sent by the client instead of named on the server's host.
    uploaded = unique("up")
    names.append(uploaded)
    with Templates(api_key=server.api_key, base_url=server.url) as templates:
        up = templates.import_image(uploaded, str(archive), aliases=[f"{uploaded}:1"], upload=True)
    assert up.name == uploaded and up.details["aliases"] == [f"{uploaded}:1"]
    assert up.details["recipe_hash"] == tmpl["recipe_hash"]  # same image, same content hash
    assert not any((server.data_dir / "uploads").iterdir())

    # A `docker save` archive of the same files.
    docker = tmp_path / "docker.tar"
    ociimage.write_docker_tar(docker, [ociimage.python_layer(base_rootfs)], {"Env": ["D=1"]})
    saved = unique("docker")
    names.append(saved)
    resp = api.post("/v1/templates/import", json={"name": saved, "path": str(docker)})
    assert resp.status_code == 201 and resp.json()["env"] == {"D": "1"}, resp.text
    box = make_sandbox(template=saved)
    read = ["python3", "-c", "print(open('/etc/removed-later').read(), end='')"]
    run = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"cmd": read})
    assert run.json()["stdout"] == "layer one\n", run.text
    assert api.delete(f"/v1/sandboxes/{box['id']}").status_code == 204

    bare = tmp_path / "bare.tar"
    ociimage.write_oci_tar(bare, [ociimage.bare_layer], {})
    refused = api.post("/v1/templates/import", json={"name": unique("bare"), "path": str(bare)})
    assert refused.status_code == 422 and "python3" in refused.json()["message"], refused.text
    not_tar = api.post("/v1/templates/import", json={"name": unique("x"), "path": "/etc/hostname"})
    assert not_tar.status_code == 422


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbank", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_cli_and_sdk(
    server: Any, client_env: dict[str, str], names: list[str], tmp_path: Path
) -> None:
    name = unique("cli")
    names.append(name)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: {name}\naliases: ['{name}:latest']\n"
        "files:\n  /opt/hello.txt: {content: 'hello yaml', mode: '0600', user: user}\n"
        "run:\n  - echo step-output\n"
        # Deleted and replaced base files: whiteouts and an opaque dir in the layer.
        "  - rm /etc/issue.net && rm -rf /usr/share/doc && mkdir /usr/share/doc\n"
        "  - echo only > /usr/share/doc/only\n"
        "env: {FROM_SPEC: 'yes'}\n"
    )
    built = cli(client_env, "templates", "build", str(spec))
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"{name} (built in") and "step-output" in built.stderr
    assert "[1/5] write 1 file(s)" in built.stderr
    with Sandbox.create(template=name, api_key=server.api_key, base_url=server.url) as sbx:
        seen = sbx.commands.run(
            "ls /usr/share/doc; test -e /etc/issue.net || echo gone; cat /opt/hello.txt; echo;"
            " stat -c '%U %a' /opt/hello.txt; echo $FROM_SPEC"
        )
        assert seen.stdout == "only\ngone\nhello yaml\nuser 600\nyes\n", seen
    again = cli(client_env, "templates", "build", str(spec), "--json")
    assert json.loads(again.stdout)["cached"] is True, again.stdout
    listed = json.loads(cli(client_env, "templates", "--json").stdout)
    assert {t["name"] for t in listed} >= {"base", name}
    alias = cli(client_env, "templates", "alias", name, f"{name}:v2")
    assert alias.returncode == 0 and alias.stdout.strip() == f"{name}:v2 -> {name}"

    logged: list[dict[str, Any]] = []
    with Templates(api_key=server.api_key, base_url=server.url) as templates:
        info = templates.get(f"{name}:v2")
        assert info.name == name and sorted(info.details["aliases"]) == [
            f"{name}:latest", f"{name}:v2",
        ]  # fmt: skip
        # A changed spec builds again; the log arrives through the callback.
        result = templates.build(
            name, {"run": ["echo via-sdk"], "env": {"FROM_SPEC": "no"}}, on_log=logged.append
        )
        assert result.cached is False and result.template.details["env"] == {"FROM_SPEC": "no"}
        assert any(e.get("line") == "via-sdk" for e in logged)
        with pytest.raises(TemplateBuildFailed) as failed:
            templates.build(unique("fails"), {"run": ["echo oops >&2; exit 3"]})
        assert "exit code 3" in failed.value.message and "oops" in failed.value.message
        with pytest.raises(TemplateNotFound):
            templates.get("no-such-template")
    gone = cli(client_env, "templates", "rm", name)
    assert gone.returncode == 0, gone.stderr
    missing = cli(client_env, "templates", "get", name)
    assert missing.returncode == 1 and "template_not_found" in missing.stderr


def test_server_killed_mid_build_leaves_nothing() -> None:
    srv = new_server("tmpl-restart")
    srv.start()
    name = unique("killed")
    try:
        with srv.client() as api:
            body = {"name": name, "spec": {"run": ["echo started; sleep 600"]}}
            with api.stream("POST", "/v1/templates", json=body) as resp:
                for line in resp.iter_lines():
                    if json.loads(line).get("line") == "started":
                        break
                build_boxes = [p.name for p in (srv.data_dir / "sandboxes").iterdir()]
                assert len(build_boxes) == 1 and build_boxes[0].startswith("tbuild-")
                srv.stop(signal.SIGKILL)
        srv.start()
        # The build sandbox had no record: the restarted server removed it.
        assert leftovers(srv.data_dir, run_cgroups()) == []
        with srv.client() as api:
            assert api.get(f"/v1/templates/{name}").status_code == 404
        assert not (TEMPLATES / name).exists()
    finally:
        srv.stop()
        srv.purge()
