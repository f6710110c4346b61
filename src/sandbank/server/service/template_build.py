"""Running a template spec's steps in a throwaway build sandbox.

Each step is a shell command started as a background process of the build
sandbox, its output forwarded line by line as it comes (``log`` events); a
step exiting non-zero ends the build with the step's last lines in the error.
Files are written through the agent. The order is fixed: apt, pip, files,
run steps, then a clean-up that keeps caches out of the template.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandbank.errors import TemplateBuildFailed
from sandbank.protocol.templates import FileSpec, RunStep, TemplateSpec
from sandbank.runtime.base import JobSpec, SandboxChannel, TemplateInfo

Emit = Callable[[dict[str, Any]], None]

#: Bumped when the build procedure (not a spec) changes what a build produces.
BUILD_FORMAT = 1
APT_DIR = "/tmp/.sandbank-apt"
#: Lines of a failed step's output quoted in the error.
TAIL_LINES = 20


@dataclass(frozen=True)
class BuildDefaults:
    """The operator's settings for builds (a spec's own apt sources / index win)."""

    apt_sources: tuple[str, ...] = ()
    pip_index: str | None = None
    disk_gb: int = 4
    vcpu: float = 2
    memory_mb: int = 2048


@dataclass(frozen=True)
class Step:
    title: str
    cmd: str | None = None
    user: str = "root"
    timeout: float = 1800
    files: tuple[tuple[str, FileSpec], ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def spec_digest(spec: TemplateSpec, base: TemplateInfo, defaults: BuildDefaults) -> str:
    """The content hash a built template is cached under: the spec, its base's own
    hash, and whatever of the operator's settings the build used."""
    body = {
        "format": BUILD_FORMAT,
        "spec": spec.model_dump(mode="json"),
        "base": [base.name, base.recipe_hash],
        "apt_sources": [] if spec.apt_sources else list(defaults.apt_sources),
        "pip_index": spec.pip_index_url or defaults.pip_index,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _apt_step(spec: TemplateSpec, defaults: BuildDefaults) -> Step:
    sources = spec.apt_sources or list(defaults.apt_sources)
    opts, prep = "", ""
    if sources:
        # The build's own source list; the base's sources.list stays as it is.
        opts = (
            f"-o Dir::Etc::SourceList={APT_DIR}/sources.list -o Dir::Etc::SourceParts={APT_DIR}/d"
        )
        lines = " ".join(shlex.quote(s) for s in sources)
        prep = f"mkdir -p {APT_DIR}/d\nprintf '%s\\n' {lines} > {APT_DIR}/sources.list\n"
    packages = " ".join(shlex.quote(p) for p in spec.apt)
    cmd = (
        f"set -eu\n{prep}export DEBIAN_FRONTEND=noninteractive\n"
        f"apt-get {opts} update\n"
        f"apt-get {opts} install -y --no-install-recommends {packages}\n"
        f"apt-get clean\nrm -rf /var/lib/apt/lists/* {APT_DIR}\n"
    )
    return Step(f"apt install {' '.join(spec.apt)}", cmd)


def _pip_step(spec: TemplateSpec, defaults: BuildDefaults) -> Step:
    index = spec.pip_index_url or defaults.pip_index
    args = ["python3", "-m", "pip", "install", "--no-cache-dir", "--no-input",
            "--disable-pip-version-check"]  # fmt: skip
    # As variables, not flags: a pip too old to know them ignores them. The base's
    # python is the system's: installing into it is what a template is for.
    env = {"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    if index:
        args += ["--index-url", index]
        if index.startswith("http://"):
            # Plain HTTP was the spec's (or the operator's) explicit choice.
            args += ["--trusted-host", urlsplit(index).netloc.rsplit("@", 1)[-1]]
    return Step(f"pip install {' '.join(spec.pip)}", shlex.join([*args, *spec.pip]), env=env)


def plan_steps(spec: TemplateSpec, defaults: BuildDefaults) -> list[Step]:
    steps: list[Step] = []
    if spec.apt:
        steps.append(_apt_step(spec, defaults))
    if spec.pip:
        steps.append(_pip_step(spec, defaults))
    if spec.files:
        files = tuple(
            (path, f if isinstance(f, FileSpec) else FileSpec(content=f))
            for path, f in spec.files.items()
        )
        steps.append(Step(f"write {len(files)} file(s)", files=files))
    for raw in spec.run:
        step = raw if isinstance(raw, RunStep) else RunStep(run=raw)
        title = step.run.strip().splitlines()[0][:80] if step.run.strip() else "run"
        steps.append(Step(f"run {title}", step.run, step.user, step.timeout, env=dict(spec.env)))
    tidy = "rm -rf /root/.cache /home/user/.cache/pip /var/cache/apt/archives/*.deb\n"
    tidy += "find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true\n"
    if spec.workdir:
        tidy += f"mkdir -p {shlex.quote(spec.workdir)}\n"
    steps.append(Step("clean up", tidy))
    return steps


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _Lines:
    """Output chunks of one stream cut into lines (a partial line waits)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in lines]

    def rest(self) -> list[str]:
        rest, self.pending = self.pending, b""
        return [rest.decode(errors="replace")] if rest else []


async def run_step(channel: SandboxChannel, index: int, step: Step, emit: Emit) -> None:
    for path, f in step.files:
        entry = await channel.write_file(
            path, _single(f.content.encode()), user=f.user, mode=f.mode
        )
        emit({"type": "log", "step": index, "stream": "stdout", "line": f"wrote {entry.path}"})
    if step.cmd is None:
        return
    job = await channel.start(
        JobSpec(cmd=["/bin/sh", "-c", step.cmd], env=step.env, user=step.user,
                timeout=step.timeout, tag="template-build")
    )  # fmt: skip
    streams = {"stdout": _Lines(), "stderr": _Lines()}
    tail: list[str] = []

    def out(stream: str, lines: list[str]) -> None:
        for line in lines:
            emit({"type": "log", "step": index, "stream": stream, "line": line})
            tail.append(line)
        del tail[:-TAIL_LINES]

    info = None
    async for event in channel.attach(job.pid):
        if event.kind in streams:
            out(event.kind, streams[event.kind].feed(event.data))
        elif event.kind == "exit":
            info = event.info
    for name, lines in streams.items():
        out(name, lines.rest())
    if info is None:
        info = await channel.wait(job.pid)
    if info.exit_code != 0:
        why = "timed out" if info.timed_out else f"failed with exit code {info.exit_code}"
        raise TemplateBuildFailed(
            f"step {index} ({step.title}) {why}:\n" + "\n".join(tail),
            step=index,
            exit_code=info.exit_code,
        )


async def run_steps(channel: SandboxChannel, steps: list[Step], emit: Emit) -> None:
    started = time.monotonic()
    for index, step in enumerate(steps, 1):
        emit({"type": "step", "step": index, "total": len(steps), "title": step.title,
              "elapsed": round(time.monotonic() - started, 2)})  # fmt: skip
        await run_step(channel, index, step, emit)
