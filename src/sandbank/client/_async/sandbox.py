"""A sandbox handle: lifecycle calls plus its ``commands`` and ``files``."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, overload
from urllib.parse import quote

import httpx

from sandbank import errors

from .._config import CREATE_TIMEOUT
from ..models import NetworkInfo, SandboxInfo, SandboxMetrics, SnapshotInfo
from ._http import AsyncApiConnection, QueryValue
from .commands import AsyncCommands
from .files import AsyncFilesystem
from .pty import AsyncPty

SANDBOXES_PATH = "/v1/sandboxes"


def sandbox_path(sandbox_id: str) -> str:
    # Quoted so an id read from user input can never reach another route.
    return f"{SANDBOXES_PATH}/{quote(sandbox_id, safe='')}"


class _KillById(Protocol):
    async def __call__(
        self,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None: ...


class _KillThis(Protocol):
    async def __call__(self) -> None: ...


class _KillMethod:
    """``kill`` is both ``Sandbox.kill(sandbox_id)`` and ``sandbox.kill()``."""

    @overload
    def __get__(self, instance: None, owner: type[AsyncSandbox]) -> _KillById: ...

    @overload
    def __get__(self, instance: AsyncSandbox, owner: type[AsyncSandbox]) -> _KillThis: ...

    def __get__(
        self, instance: AsyncSandbox | None, owner: type[AsyncSandbox]
    ) -> _KillById | _KillThis:
        if instance is None:
            return owner._kill_by_id
        return instance._kill


class AsyncSandbox:
    """A running sandbox; create one with ``create`` or attach with ``connect``.

    Used as a context manager it is killed on exit. ``close()`` only drops the
    HTTP connection and leaves the sandbox running until its timeout.
    """

    kill = _KillMethod()

    def __init__(self, info: SandboxInfo, connection: AsyncApiConnection) -> None:
        self._info = info
        self._connection = connection
        self._path = sandbox_path(info.id)
        self.commands = AsyncCommands(connection, self._path)
        self.files = AsyncFilesystem(connection, self._path)
        self.pty = AsyncPty(connection, self._path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sandbox_id} {self._info.status}>"

    @property
    def sandbox_id(self) -> str:
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """The sandbox as last seen by ``create``, ``connect``, ``get_info`` or ``set_timeout``."""
        return self._info

    @classmethod
    async def create(
        cls,
        template: str = "base",
        *,
        name: str | None = None,
        vcpu: float | None = None,
        memory_mb: int | None = None,
        disk_gb: int | None = None,
        region: str | None = None,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: int | None = None,
        allow_internet_access: bool | None = None,
        network: Mapping[str, Sequence[str]] | None = None,
        snapshot: str | None = None,
        idle_timeout: int | None = None,
        on_timeout: str | None = None,
        auto_resume: bool | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        """Start a sandbox from ``template``; ``timeout`` is its lifetime in seconds.

        Unset resources take the server's defaults. ``envs`` are set for every
        command run in it; ``metadata`` labels it for ``list`` filters.
        ``allow_internet_access=False`` gives it no egress at all; ``network``
        is ``{"allow_out": [...], "deny_out": [...]}`` of IPv4 addresses,
        CIDRs, domain names and ``*.example.com`` wildcards, where allow wins
        over deny (``deny_out=[ALL_TRAFFIC]`` plus ``allow_out`` is an allow
        list). ``snapshot`` (id or name) starts it on a copy of that snapshot's
        disk. ``idle_timeout`` seconds without any operation on it lead to
        ``on_timeout`` (``kill``, ``pause`` or ``hibernate``); ``auto_resume`` makes
        calls on a paused or hibernated sandbox resume or wake it.
        """
        body: dict[str, Any] = {"template": template}
        optional: dict[str, Any] = {
            "name": name,
            "vcpu": vcpu,
            "memory_mb": memory_mb,
            "disk_gb": disk_gb,
            "region": region,
            "env": dict(envs) if envs is not None else None,
            "metadata": dict(metadata) if metadata is not None else None,
            "timeout": timeout,
            "allow_internet_access": allow_internet_access,
            "network": {k: list(v) for k, v in network.items()} if network is not None else None,
            "snapshot": snapshot,
            "idle_timeout": idle_timeout,
            "on_timeout": on_timeout,
            "auto_resume": auto_resume,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        connection = AsyncApiConnection.open(api_key, base_url, transport)
        try:
            data = await connection.request_json(
                "POST", SANDBOXES_PATH, json=body, timeout=CREATE_TIMEOUT
            )
        except BaseException:
            await connection.close()
            raise
        return cls(SandboxInfo.from_dict(data), connection)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        """Attach to an existing sandbox; ``SandboxNotFound`` when there is none."""
        connection = AsyncApiConnection.open(api_key, base_url, transport)
        try:
            data = await connection.request_json("GET", sandbox_path(sandbox_id))
        except BaseException:
            await connection.close()
            raise
        return cls(SandboxInfo.from_dict(data), connection)

    @staticmethod
    async def list(
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Every sandbox of the caller's tenant matching the filters.

        ``metadata`` keeps sandboxes carrying all the given labels. ``limit``
        is the page size asked of the server; all pages are fetched.
        """
        filters: builtins.list[tuple[str, QueryValue]] = []
        if status is not None:
            filters.append(("status", status))
        for key, value in (metadata or {}).items():
            filters.append((f"metadata[{key}]", value))
        if limit is not None:
            filters.append(("limit", limit))
        found: builtins.list[SandboxInfo] = []
        cursor: str | None = None
        async with AsyncApiConnection.open(api_key, base_url, transport) as connection:
            while True:
                params = [*filters, ("cursor", cursor)] if cursor else filters
                page = await connection.request_json("GET", SANDBOXES_PATH, params=params)
                found.extend(SandboxInfo.from_dict(item) for item in page["data"])
                cursor = page.get("next_cursor")
                if not cursor:
                    return found

    @classmethod
    async def _kill_by_id(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        async with AsyncApiConnection.open(api_key, base_url, transport) as connection:
            await connection.request("DELETE", sandbox_path(sandbox_id))

    async def _kill(self) -> None:
        await self._connection.request("DELETE", self._path)

    async def get_info(self) -> SandboxInfo:
        self._info = SandboxInfo.from_dict(await self._connection.request_json("GET", self._path))
        return self._info

    async def set_timeout(self, seconds: int) -> SandboxInfo:
        """Kill the sandbox ``seconds`` from now instead of at its current deadline."""
        data = await self._connection.request_json(
            "POST", f"{self._path}/timeout", json={"timeout": seconds}
        )
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def pause(self) -> SandboxInfo:
        """Freeze every process of the sandbox (memory kept, no CPU) until
        ``resume``; its timeout keeps running. Idempotent."""
        data = await self._connection.request_json("POST", f"{self._path}/pause")
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def resume(self) -> SandboxInfo:
        """Thaw a paused sandbox; idempotent."""
        data = await self._connection.request_json("POST", f"{self._path}/resume")
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def _lifecycle(self, verb: str, body: dict[str, Any] | None = None) -> SandboxInfo:
        data = await self._connection.request_json("POST", f"{self._path}/{verb}", json=body)
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def stop(self) -> SandboxInfo:
        """End every process and free memory and CPU; the disk is kept. Idempotent."""
        return await self._lifecycle("stop")

    async def start(self) -> SandboxInfo:
        """Start a stopped sandbox on its disk; processes begin from scratch."""
        return await self._lifecycle("start")

    async def restart(self) -> SandboxInfo:
        return await self._lifecycle("restart")

    async def restore(self, snapshot: str) -> SandboxInfo:
        """Put the disk back to ``snapshot`` (id or name); a running sandbox is
        restarted on it, a stopped one stays stopped."""
        return await self._lifecycle("restore", {"snapshot": snapshot})

    async def snapshot(self, name: str | None = None, memory: bool = False) -> SnapshotInfo:
        """A consistent copy of the sandbox's disk (it is frozen while copied);
        ``memory``: its running processes and memory too (needs checkpoints)."""
        body: dict[str, Any] = {"name": name} if name is not None else {}
        if memory:
            body["memory"] = True
        data = await self._connection.request_json("POST", f"{self._path}/snapshots", json=body)
        return SnapshotInfo.from_dict(data)

    async def update(
        self,
        *,
        vcpu: float | None = None,
        memory_mb: int | None = None,
        idle_timeout: int | None = None,
        on_timeout: str | None = None,
        auto_resume: bool | None = None,
    ) -> SandboxInfo:
        """Resize (live when running) and/or change the idle policy; None: unchanged,
        ``idle_timeout=0``: none."""
        given = {
            "vcpu": vcpu,
            "memory_mb": memory_mb,
            "idle_timeout": idle_timeout,
            "on_timeout": on_timeout,
            "auto_resume": auto_resume,
        }
        body = {key: value for key, value in given.items() if value is not None}
        data = await self._connection.request_json("PATCH", self._path, json=body)
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def hibernate(self) -> SandboxInfo:
        """Save the sandbox's processes and memory to disk and stop it: it holds
        no memory or CPU until ``wake``; its timeout keeps running. Idempotent."""
        data = await self._connection.request_json("POST", f"{self._path}/hibernate")
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def wake(self) -> SandboxInfo:
        """Restore a hibernated sandbox where it left off; idempotent."""
        data = await self._connection.request_json("POST", f"{self._path}/wake")
        self._info = SandboxInfo.from_dict(data)
        return self._info

    async def fork(self, count: int = 1) -> builtins.list[Self]:
        """``count`` new sandboxes with this one's running processes, memory and
        files, each with its own id, disk and address; this one keeps running.
        They share this handle's connection."""
        data = await self._connection.request_json(
            "POST", f"{self._path}/fork", json={"count": count}
        )
        return [type(self)(SandboxInfo.from_dict(d), self._connection) for d in data["data"]]

    async def update_network(
        self,
        *,
        allow_internet_access: bool = True,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
    ) -> NetworkInfo:
        """Replace the egress policy (as a whole) of the running sandbox; new
        connections follow it at once, open ones go on."""
        body: dict[str, Any] = {
            "allow_internet_access": allow_internet_access,
            "allow_out": list(allow_out or []),
            "deny_out": list(deny_out or []),
        }
        data = await self._connection.request_json("PUT", f"{self._path}/network", json=body)
        return NetworkInfo.from_dict(data)

    async def get_network(self) -> NetworkInfo:
        return NetworkInfo.from_dict(
            await self._connection.request_json("GET", f"{self._path}/network")
        )

    async def preview_url(self, port: int, *, by_host: bool = False) -> str:
        """A URL reaching TCP ``port`` inside the sandbox through the server, its
        private token included; ``by_host``: the ``{port}-{id}.localhost`` form
        (the app gets its own origin)."""
        data = await self._connection.request_json("GET", f"{self._path}/preview")
        template: str = data["host_url" if by_host else "url"]
        return template.replace("{port}", str(int(port)))

    async def get_host(self, port: int) -> str:
        """E2B's ``get_host``: the ``{port}-{id}.localhost[:server port]`` host
        that reaches ``port`` (no scheme, no token: a request to it needs the
        preview token, see ``preview_url``)."""
        url = await self.preview_url(port, by_host=True)
        return url.partition("://")[2].partition("/")[0]

    async def is_running(self) -> bool:
        try:
            info = await self.get_info()
        except errors.SandboxNotFound:
            return False
        return info.status == "running"

    async def get_metrics(self) -> SandboxMetrics:
        data = await self._connection.request_json("GET", f"{self._path}/metrics")
        return SandboxMetrics.from_dict(data)

    async def close(self) -> None:
        """Drop the HTTP connection; the sandbox itself keeps running."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._kill()
        except errors.SandboxNotFound:
            pass
        except errors.SandbankError:
            # An error already leaving the block says more than a failed cleanup.
            if exc_type is None:
                raise
        finally:
            await self.close()
