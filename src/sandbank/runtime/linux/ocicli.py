"""The OCI runtime's command line (runc, or crun which takes the same flags).

Always with ``--root <data_dir>/runc``: only our containers are listed, and
container state lives with the rest of the data dir.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbank.errors import RuntimeFailure
from sandbank.runtime import _proc
from sandbank.runtime.linux import kernel


def pick_binary(setting: str, unified_cgroups: bool) -> str:
    """Resolve the ``oci_runtime`` setting to an executable path.

    "auto" prefers crun (faster to start) but only on a pure cgroup v2 host:
    crun 1.8 refuses the hybrid layout; runc handles both. An explicit name or
    path always wins.
    """
    if setting == "auto":
        crun = shutil.which("crun")
        if crun and unified_cgroups:
            return crun
        runc = shutil.which("runc")
        if runc:
            return runc
        raise RuntimeFailure("no OCI runtime found: install runc (apt-get install runc)")
    found = shutil.which(setting)
    if found is None:
        raise RuntimeFailure(f"OCI runtime {setting!r} not found")
    return found


@dataclass(frozen=True)
class OciCli:
    binary: str
    root: Path

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def state_dir(self, container_id: str) -> Path:
        return self.root / container_id

    async def run_detached(
        self, container_id: str, bundle: Path, log: Path, timeout: float, stdin: int | None = None
    ) -> None:
        """Start the container without keeping it a child of the server.

        ``run -d`` returns once the container process is running; its stdio is
        handed over to the container (stdin the descriptor ``stdin`` or
        /dev/null, stdout/stderr the log), and a new session keeps a terminal's
        signals to the server away from it.

        ``--no-new-keyring``: by default the runtime gives every container a
        session keyring of its own, charged to the key quota of the uid that
        root inside maps to, the same host uid for every sandbox: past
        ``kernel.keys.maxkeys`` (200) sandboxes, runs fail with "disk quota
        exceeded". A sandbox cannot use keyrings anyway (keyctl, add_key and
        request_key are denied by seccomp, /proc/keys is masked).
        """
        with open(log, "ab") as out:
            result = await _proc.run(
                self._argv("run", "-d", "--no-new-keyring", "--bundle", str(bundle), container_id),
                output=out,
                stdin_fd=stdin,
                new_session=True,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            detail = _proc.tail(log.read_bytes()) if log.exists() else ""
            raise RuntimeFailure(
                f"{Path(self.binary).name} run failed with exit code {result.returncode}: {detail}"
            )

    async def kill_all(self, container_id: str) -> _proc.ProcResult:
        return await _proc.run(
            self._argv("kill", "--all", container_id, "KILL"), check=False, timeout=15
        )

    async def delete(self, container_id: str) -> _proc.ProcResult:
        return await _proc.run(
            self._argv("delete", "--force", container_id), check=False, timeout=30
        )

    async def delete_stopped(self, container_id: str) -> None:
        """Delete a container none of whose processes runs any more.

        runc keeps nothing of a stopped container but its state directory
        (cgroups are the caller's to remove, and no hooks are configured), so
        that is removed without spawning runc (~8 ms). Other runtimes, and a
        container whose init still runs after all, go through ``delete``.
        """
        if self.saved_state(container_id) is None or await self.init_process(container_id):
            await self.delete(container_id)
            return
        await asyncio.to_thread(shutil.rmtree, self.state_dir(container_id), True)

    async def list_ids(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        result = await _proc.run(self._argv("list", "--quiet"), timeout=15)
        return {line.strip() for line in result.text.splitlines() if line.strip()}

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``<binary> state``, or None when the container does not exist."""
        if not self.state_dir(container_id).exists():
            return None
        result = await _proc.run(self._argv("state", container_id), check=False, timeout=15)
        if result.returncode != 0:
            return None
        data = json.loads(result.stdout)
        return data if isinstance(data, dict) else None

    def saved_state(self, container_id: str) -> dict[str, Any] | None:
        """runc's own state file, read without spawning anything (runc layout only)."""
        try:
            data = json.loads((self.state_dir(container_id) / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def init_process(self, container_id: str) -> tuple[int, int] | None:
        """The container's init as (host pid, start time) while it runs; runc's
        state file is read directly (no process spawned), other runtimes are asked."""
        state = self.saved_state(container_id)
        if state is None:
            if not self.state_dir(container_id).exists():
                return None
            full = await self.state(container_id)
            if full is None or full.get("status") != "running":
                return None
            pid, start = full.get("pid"), None
        else:
            pid, start = state.get("init_process_pid"), state.get("init_process_start")
        if not isinstance(pid, int) or pid <= 0:
            return None
        now = kernel.process_start(pid)
        # A recycled pid has another start time.
        if now is None or (start is not None and int(start) != now):
            return None
        return pid, now
