"""What a sandbox gets from its template at create: the template's variables
under the caller's, its start command as a background process, and a create
that returns only once the ready check passes."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from sandbank.errors import SandboxNotReady
from sandbank.runtime.base import ExecSpec, JobSpec, Runtime, SandboxChannel, TemplateInfo
from sandbank.server.service.params import Resolved

#: Pause between two runs of a ready check that failed.
READY_POLL = 0.1
START_TAG = "template-start"


async def apply(runtime: Runtime, want: Resolved) -> tuple[Resolved, TemplateInfo]:
    """``want`` for the template an alias names, with the template's env under its own;
    TemplateNotFound (listing those that exist) for an unknown name."""
    info = await runtime.template(want.template)
    want = dataclasses.replace(want, template=info.name, env={**info.env, **want.env})
    return want, info


def needs_boot(info: TemplateInfo) -> bool:
    return bool(info.start_cmd or info.ready_cmd)


def _tail(data: bytes, lines: int = 10) -> str:
    return "\n".join(data.decode(errors="replace").strip().splitlines()[-lines:])


async def boot(channel: SandboxChannel, info: TemplateInfo, env: dict[str, str]) -> None:
    """Start the template's start command, then wait for its ready check."""
    user = info.user or "user"
    pid = None
    if info.start_cmd:
        job = await channel.start(
            JobSpec(cmd=["/bin/sh", "-c", info.start_cmd], env=env, cwd=info.workdir,
                    user=user, tag=START_TAG)
        )  # fmt: skip
        pid = job.pid
    if not info.ready_cmd:
        return
    deadline = time.monotonic() + info.ready_timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        last = await channel.exec(
            ExecSpec(cmd=["/bin/sh", "-c", info.ready_cmd], env=env, cwd=info.workdir,
                     user=user, timeout=max(1.0, min(left, 10.0)))
        )  # fmt: skip
        if last.exit_code == 0:
            return
        await asyncio.sleep(READY_POLL)
    message = (
        f"template {info.name!r}: ready check {info.ready_cmd!r} did not pass within "
        f"{info.ready_timeout:g} s"
    )
    if last is not None:
        message += f" (last exit code {last.exit_code}: {_tail(last.stderr or last.stdout)})"
    if pid is not None:
        start = next((j for j in await channel.jobs() if j.pid == pid), None)
        if start is not None and not start.running:
            message += f"; the start command {info.start_cmd!r} exited with {start.exit_code}"
    raise SandboxNotReady(message, template=info.name)
