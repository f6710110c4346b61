"""Run the real server as a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    templates_dir: Path
    api_key: str
    port: int
    extra_env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    #: ``info`` makes the server log each fork's phases (bench/checkpoint.py reads them).
    log_level: str = "warning"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.server.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SANDBANK_API_KEY": self.api_key,
                "SANDBANK_TEMPLATES_DIR": str(self.templates_dir),
                "SANDBANK_SWEEP_INTERVAL": "0.5",
                # No warm pool unless a test asks for one: pooled sandboxes would
                # outlive each module and trip the leak check.
                "SANDBANK_POOL_SIZE": "0",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 900) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbank",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--log-level",
                self.log_level,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def purge(self) -> None:
        """After the server stopped: tear down whatever of its sandboxes is
        left on the host (a failed test must not leak mounts or processes),
        then remove its data dir."""
        purge_data_dir(self.data_dir, self.templates_dir)
        self.log_path.unlink(missing_ok=True)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.api_key}"},
            timeout=120,
        )


def purge_data_dir(data_dir: Path, templates_dir: Path) -> None:
    """Destroy every sandbox the runtime finds under ``data_dir``, then remove it."""
    import asyncio
    import shutil

    from sandbank.runtime.linux.driver import LinuxRuntime

    async def destroy_all() -> None:
        runtime = LinuxRuntime(data_dir, templates_dir)
        await runtime.start()
        try:
            for sandbox_id in await runtime.running():
                await runtime.destroy(sandbox_id)
        finally:
            await runtime.close()

    if data_dir.exists():
        asyncio.run(destroy_all())
        shutil.rmtree(data_dir, ignore_errors=True)
