"""A sandbox's resource use, read from the kernel: its cgroup and its disk."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sandbank.runtime.base import SandboxUsage
from sandbank.runtime.linux.cgroups import Cgroup


class UsageReader:
    """Keeps the last CPU sample per sandbox: a percentage needs two."""

    def __init__(self) -> None:
        self._cpu_samples: dict[str, tuple[float, float]] = {}

    def forget(self, sandbox_id: str) -> None:
        self._cpu_samples.pop(sandbox_id, None)

    async def read(self, sandbox_id: str, cg: Cgroup, disk: Path) -> SandboxUsage:
        """Raises FileNotFoundError once the cgroup or the disk is gone."""
        now, cpu = time.monotonic(), cg.cpu_usage_seconds()
        last = self._cpu_samples.get(sandbox_id)
        if last is None:
            # No earlier sample to compare with: take two, 100 ms apart.
            last = (now, cpu)
            await asyncio.sleep(0.1)
            now, cpu = time.monotonic(), cg.cpu_usage_seconds()
        self._cpu_samples[sandbox_id] = (now, cpu)
        elapsed = max(now - last[0], 1e-6)
        if not os.path.ismount(disk):
            raise FileNotFoundError(disk)
        st = os.statvfs(disk)
        return SandboxUsage(
            # Percent of one CPU, like top: 200 means two cores busy.
            cpu_percent=round(max(0.0, cpu - last[1]) / elapsed * 100, 1),
            cpu_usage_seconds=cpu,
            memory_bytes=cg.memory_current(),
            memory_limit_bytes=cg.memory_limit(),
            disk_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
            disk_limit_bytes=st.f_blocks * st.f_frsize,
            pids=cg.pids_current(),
            pids_limit=cg.pids_max(),
        )
