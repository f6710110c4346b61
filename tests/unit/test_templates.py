"""Templates without the host: specs, build planning and hashing, the service
over the fake runtime, the template store's files, aliases and image helpers."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from sandbank.client import Templates
from sandbank.errors import (
    InvalidState,
    SandbankError,
    SandboxNotReady,
    TemplateBuildFailed,
    TemplateNotFound,
    ValidationFailed,
)
from sandbank.protocol.templates import FileSpec, TemplateSpec
from sandbank.runtime.base import TemplateInfo
from sandbank.runtime.fake import FakeRuntime
from sandbank.runtime.templates import TemplateStore, catalog, image
from sandbank.server.service.params import CreateParams
from sandbank.server.service.policy import Quota
from sandbank.server.service.sandboxes import SandboxService
from sandbank.server.service.telemetry import Telemetry
from sandbank.server.service.template_build import (
    BuildDefaults,
    _Lines,
    plan_steps,
    spec_digest,
)
from sandbank.server.service.templates import TemplateService
from sandbank.server.store.sql import SqlStore
from tests.unit.test_service import LIMITS, Clock

BASE = TemplateInfo(name="base", ready=True, recipe_hash="b" * 64)


# -- specs and planning ---------------------------------------------------------------


def test_spec_forms_and_validation() -> None:
    spec = TemplateSpec.model_validate(
        {"files": {"/etc/x": "text", "/opt/y": {"content": "y", "mode": "0755"}},
         "run": ["echo a", {"run": "echo b", "user": "user"}], "start": "srv", "ready": "true"}
    )  # fmt: skip
    assert isinstance(spec.files["/opt/y"], FileSpec) and spec.files["/opt/y"].mode == 0o755
    for bad in (
        {"files": {"relative/path": "x"}},
        {"apt": ["ok; rm -rf /"]},
        {"apt_sources": ["not a deb line"]},
        {"env": {"1BAD": "x"}},
        {"unknown": 1},
        {"ready": {"cmd": "true", "timeout": 0}},
    ):
        with pytest.raises(ValidationError):
            TemplateSpec.model_validate(bad)


def test_plan_order_and_sources() -> None:
    spec = TemplateSpec(apt=["curl"], pip=["requests"], files={"/a": "x"}, run=["make"])
    steps = plan_steps(
        spec, BuildDefaults(apt_sources=("deb http://m/ d main",), pip_index="http://i/simple/")
    )
    assert [s.title.split()[0] for s in steps] == ["apt", "pip", "write", "run", "clean"]
    assert "Dir::Etc::SourceList=" in (steps[0].cmd or "") and "deb http://m/ d main" in (
        steps[0].cmd or ""
    )
    assert steps[1].env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert "--trusted-host i" in (steps[1].cmd or "") and "--index-url http://i/simple/" in (
        steps[1].cmd or ""
    )
    # No sources anywhere: apt uses the base's own lists.
    plain = plan_steps(TemplateSpec(apt=["curl"]), BuildDefaults())
    assert "Dir::Etc" not in (plain[0].cmd or "")


def test_digest_follows_spec_base_and_settings() -> None:
    spec = TemplateSpec(run=["echo"])
    one = spec_digest(spec, BASE, BuildDefaults())
    assert one == spec_digest(TemplateSpec(run=["echo"]), BASE, BuildDefaults())
    assert one != spec_digest(TemplateSpec(run=["echo 2"]), BASE, BuildDefaults())
    rebuilt = TemplateInfo(name="base", ready=True, recipe_hash="c" * 64)
    assert one != spec_digest(spec, rebuilt, BuildDefaults())
    assert one != spec_digest(spec, BASE, BuildDefaults(pip_index="http://x/"))


def test_lines_split_across_chunks() -> None:
    lines = _Lines()
    assert lines.feed(b"ab") == [] and lines.feed(b"c\nde\r\nf") == ["abc", "de"]
    assert lines.rest() == ["f"] and lines.rest() == []


# -- the service over the fake runtime ------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    db = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await db.open()
    yield db
    await db.close()


async def test_cache_hit_starts_nothing(store: SqlStore) -> None:
    runtime = FakeRuntime()
    templates = TemplateService(runtime, store)
    spec = TemplateSpec(run=["echo hi"])
    plan = await templates.prepare_build("app", spec)
    assert plan.cached is None
    await runtime.capture_template("x", TemplateInfo(name="app", ready=True, base="base",
                                                     recipe_hash=plan.digest))  # fmt: skip
    events: list[dict[str, Any]] = []
    info, cached = await templates.run_build(
        await templates.prepare_build("app", spec), events.append
    )
    assert cached and info.name == "app" and events == [] and not runtime.destroyed


async def test_failed_step_removes_the_build_sandbox(store: SqlStore) -> None:
    runtime = FakeRuntime()
    templates = TemplateService(runtime, store)
    events: list[dict[str, Any]] = []
    plan = await templates.prepare_build("app", TemplateSpec(run=["echo before", "exit 3"]))
    with pytest.raises(TemplateBuildFailed) as failed:
        await templates.run_build(plan, events.append)
    assert "step 2 (run exit 3) failed with exit code 3" in failed.value.message
    assert [e["title"] for e in events if e["type"] == "step"] == ["run echo before", "run exit 3"]
    assert {"type": "log", "step": 1, "stream": "stdout", "line": "before"} in events
    assert not runtime.boxes and runtime.destroyed[0].startswith("tbuild-")
    with pytest.raises(TemplateNotFound):
        await runtime.template("app")


async def test_bad_names_and_unknown_base_fail_before_building(store: SqlStore) -> None:
    templates = TemplateService(FakeRuntime(), store)
    with pytest.raises(ValidationFailed):
        await templates.prepare_build("Bad Name", TemplateSpec())
    with pytest.raises(ValidationFailed):
        await templates.prepare_build("ok", TemplateSpec(), aliases=("no spaces",))
    with pytest.raises(ValidationFailed):
        await templates.prepare_build("base", TemplateSpec(base="base"))
    with pytest.raises(TemplateNotFound) as missing:
        await templates.prepare_build("ok", TemplateSpec(base="nope"))
    assert missing.value.details["templates"] == ["base"]


async def test_sandboxes_get_env_start_and_ready(store: SqlStore) -> None:
    runtime = FakeRuntime()
    service = SandboxService(store, runtime, LIMITS, Quota(3, 8, 4096), Clock(), Telemetry())
    templates = TemplateService(runtime, store)
    await runtime.capture_template("x", TemplateInfo(
        name="app", ready=True, base="base", recipe_hash="d" * 64, env={"A": "1", "B": "t"},
        start_cmd="sleep 60", ready_cmd="true", ready_timeout=1,
    ))  # fmt: skip
    await templates.alias("app", "app:1")
    record = await service.create("t1", CreateParams(template="app:1", env={"B": "mine"}))
    assert record.template == "app" and record.env == {"A": "1", "B": "mine"}
    jobs = await runtime.channel(record.id).jobs()
    assert [(j.tag, j.cmd, j.running) for j in jobs] == [
        ("template-start", ["/bin/sh", "-c", "sleep 60"], True)
    ]
    with pytest.raises(InvalidState):
        await templates.delete("app")
    await service.kill("t1", record.id)
    await templates.delete("app")
    with pytest.raises(TemplateNotFound):
        await templates.get("app:1")


async def test_ready_check_that_fails_fails_the_create(store: SqlStore) -> None:
    runtime = FakeRuntime()
    service = SandboxService(store, runtime, LIMITS, Quota(3, 8, 4096), Clock(), Telemetry())
    await runtime.capture_template("x", TemplateInfo(
        name="never", ready=True, base="base", recipe_hash="e" * 64, ready_cmd="false",
        ready_timeout=0.3,
    ))  # fmt: skip
    with pytest.raises(SandboxNotReady) as failed:
        await service.create("t1", CreateParams(template="never"))
    assert "ready check 'false' did not pass within 0.3 s" in failed.value.message
    assert not runtime.boxes


# -- the template store's files ---------------------------------------------------------------


def _put(store: TemplateStore, name: str, digest: str, lowers: list[str]) -> Path:
    tree = store.root / name / digest[:16]
    (tree / "rootfs").mkdir(parents=True)
    meta = {"name": name, "kind": "built", "recipe_hash": digest, "lowers": lowers,
            "config": {"env": {"K": "v"}, "start_cmd": "s", "ready_timeout": 5}}  # fmt: skip
    (tree / "meta.json").write_text(json.dumps(meta))
    os.symlink(tree.name, store.root / name / "current")
    return tree / "rootfs"


async def test_store_install_stack_alias_delete(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path, recipes={})
    base = _put(store, "base0", "1" * 64, [])

    async def fill(rootfs: Path) -> dict[str, object]:
        rootfs.mkdir()
        (rootfs / "f").write_text("x")
        below = str(base.relative_to(tmp_path))
        return {"kind": "built", "recipe_hash": "2" * 64, "lowers": [below],
                "config": {"env": {"E": "1"}}}  # fmt: skip

    info = await store.install("app", fill)
    assert info.kind == "built" and info.env == {"E": "1"} and info.size_bytes
    assert store.lowers("app") == [tmp_path / "app" / ("2" * 16) / "rootfs", base]

    # The same content again (a re-import, a rebuild back to an earlier spec):
    # the existing tree stays, inode for inode.
    inode = (tmp_path / "app" / ("2" * 16) / "rootfs" / "f").stat().st_ino
    assert (await store.install("app", fill)).recipe_hash == "2" * 64
    assert (tmp_path / "app" / ("2" * 16) / "rootfs" / "f").stat().st_ino == inode
    assert [p.name for p in (tmp_path / "app").iterdir() if p.name.startswith(".")] == []

    async def broken(rootfs: Path) -> dict[str, object]:
        rootfs.mkdir()
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError):
        await store.install("other", broken)
    assert not (tmp_path / "other").exists()

    assert store.alias("app", "app:1").aliases == ("app:1",)
    assert store.resolve("app:1") == "app"
    with pytest.raises(InvalidState):
        store.alias("app", "base0")
    with pytest.raises(InvalidState):
        store.delete("base0")  # the base of app
    with pytest.raises(InvalidState):
        store.delete("app:1")  # an alias: only the alias could go
    store.delete("app")
    assert (
        not (tmp_path / "app").exists() and catalog.Aliases(tmp_path / "aliases.json").load() == {}
    )
    with pytest.raises(TemplateNotFound) as missing:
        store.resolve("app")
    assert missing.value.details["templates"] == ["base0"]


async def test_lookup_is_remembered_until_its_files_change(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path, recipes={})
    _put(store, "app", "1" * 64, [])
    first = store.lookup("app")
    assert first.recipe_hash == "1" * 64 and first.aliases == ()
    reads: list[str] = []
    real_info = store.info
    store.info = lambda name: reads.append(name) or real_info(name)  # type: ignore[method-assign]
    assert store.lookup("app") == first and reads == []  # nothing changed: not read again
    store.lookup("app").env["X"] = "1"  # callers get their own env
    assert store.lookup("app").env == {"K": "v"}

    # Another process (or this one) swaps the tree, or changes the aliases.
    tree = tmp_path / "app" / ("2" * 16)
    (tree / "rootfs").mkdir(parents=True)
    (tree / "meta.json").write_text(json.dumps({"name": "app", "recipe_hash": "2" * 64}))
    os.symlink(tree.name, tmp_path / "app" / "current.new")
    os.replace(tmp_path / "app" / "current.new", tmp_path / "app" / "current")
    assert store.lookup("app").recipe_hash == "2" * 64 and reads == ["app"]
    store.alias("app", "app:2")
    assert store.lookup("app").aliases == ("app:2",)
    assert store.lookup("app:2").name == "app"
    store.delete("app")
    with pytest.raises(TemplateNotFound):
        store.lookup("app")


async def test_recipe_rebuild_keeps_a_tree_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe changed back to an earlier version whose tree is still in use
    gets that tree back as it is: never built again over it, never replaced."""
    from dataclasses import replace

    import sandbank.runtime.templates as templates_module
    from sandbank.runtime.templates.recipe import BASE

    builds: list[str] = []

    async def fake_build(recipe: Any, rootfs: Path, **_: Any) -> None:
        builds.append(recipe.setup)
        rootfs.mkdir(parents=True)
        (rootfs / "marker").write_text(recipe.setup)

    monkeypatch.setattr(templates_module, "build_rootfs", fake_build)
    first = replace(BASE, name="r", setup="one")
    store = TemplateStore(tmp_path, recipes={"r": first})
    await store.ensure("r")
    old_tree = tmp_path / "r" / first.digest()[:16]
    inode = (old_tree / "rootfs" / "marker").stat().st_ino
    # Another template stacks on that tree (as a running sandbox's mount would hold it).
    _put(store, "app", "9" * 64, [str((old_tree / "rootfs").relative_to(tmp_path))])

    store.recipes = {"r": replace(first, setup="two")}
    await store.ensure("r")
    assert old_tree.is_dir() and store.lower("r") != old_tree / "rootfs"

    store.recipes = {"r": first}
    info = await store.ensure("r")
    assert info.ready and info.recipe_hash == first.digest()
    assert store.lower("r") == old_tree / "rootfs"
    assert (old_tree / "rootfs" / "marker").stat().st_ino == inode
    assert builds == ["one", "two"]
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".build")] == []


# -- images ---------------------------------------------------------------------------------------


def test_image_tree_gets_python_link_user_and_mount_points(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "opt/py/bin").mkdir(parents=True)
    (root / "opt/py/bin/python3.12").write_text("")
    os.symlink("../../../opt/py/bin/python3.12", root / "usr/local/bin/python3")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    image.prepare_tree(root)
    assert os.readlink(root / "usr/bin/python3") == "/usr/local/bin/python3"
    assert "user:x:1000:1000::/home/user:/bin/sh" in (root / "etc/passwd").read_text()
    assert (root / "etc/group").read_text().endswith("user:x:1000:\n")
    assert (root / "opt/sandbank/lib").is_dir() and (root / "run/sandbank").is_dir()
    assert (root / "home/user").stat().st_uid == 1000


def test_image_without_python_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(ValidationFailed) as refused:
        image.prepare_tree(tmp_path)
    assert "no python3" in refused.value.message


def test_archive_kinds(tmp_path: Path) -> None:
    import tarfile

    def tar(name: str, members: list[str]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w") as out:
            for member in members:
                (tmp_path / member).write_text("{}")
                out.add(tmp_path / member, arcname=member)
        return path

    assert image.transport(tar("a.tar", ["oci-layout", "index.json"])) == "oci-archive"
    assert image.transport(tar("b.tar", ["manifest.json"])) == "docker-archive"
    with pytest.raises(ValidationFailed):
        image.transport(tar("c.tar", ["other"]))
    with pytest.raises(ValidationFailed):
        image.transport(tmp_path / "missing.tar")


# -- the SDK's reading of a build stream ------------------------------------------------------


def _sdk(events: list[dict[str, Any]]) -> Templates:
    def reply(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["spec"] == {"run": ["x"]}
        # Split mid-line: the SDK must join chunks into lines.
        body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        return httpx.Response(200, content=iter([body[:7], body[7:30], body[30:]]))

    return Templates(api_key="k", base_url="http://sbk.test", transport=httpx.MockTransport(reply))


def test_sdk_build_events_and_errors() -> None:
    step = {"type": "step", "step": 1, "total": 1, "title": "run x", "elapsed": 0}
    log = {"type": "log", "step": 1, "stream": "stdout", "line": "hi"}
    result = {"type": "result", "cached": False, "seconds": 1.5,
              "template": {"name": "t", "ready": True, "kind": "built"}}  # fmt: skip
    seen: list[dict[str, Any]] = []
    with _sdk([step, log, result]) as templates:
        built = templates.build("t", {"run": ["x"]}, on_log=seen.append)
    assert seen == [step, log] and built.template.name == "t" and built.seconds == 1.5
    error = {"type": "error", "status": 422, "code": "template_build_failed",
             "message": "step 1 (run x) failed", "step": 1, "exit_code": 2}  # fmt: skip
    with _sdk([step, error]) as templates, pytest.raises(TemplateBuildFailed) as failed:
        templates.build("t", {"run": ["x"]})
    assert failed.value.details == {"step": 1, "exit_code": 2}
    with _sdk([step]) as templates, pytest.raises(SandbankError):
        templates.build("t", {"run": ["x"]})
