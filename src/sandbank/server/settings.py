"""Operator settings: arguments, then ``SANDBANK_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 7420


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBANK_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("/var/lib/sandbank")
    #: Where built templates are cached; default: <data_dir>/templates.
    templates_dir: Path | None = None
    #: SQLAlchemy URL; default: SQLite in the data dir.
    database_url: str | None = None
    #: A key given at start that is always a valid admin key (not stored).
    api_key: str | None = None
    #: Base URL clients reach the server at (terminal URLs); default http://host:port.
    public_url: str | None = None

    runtime: Literal["linux", "fake"] = "linux"
    #: OCI runtime binary: "auto" picks crun where it works (pure cgroup v2), else runc.
    oci_runtime: str = "auto"
    #: Debian mirror for building the base template; default: the host's apt source.
    template_mirror: str | None = None
    #: Template builds (docs/templates.md): apt source lines used instead of the
    #: base's (a local mirror; JSON list in the environment), the pip index, and
    #: the disk of the throwaway build sandbox.
    template_build_apt_sources: list[str] = Field(default_factory=list)
    template_build_pip_index: str | None = None
    template_build_disk_gb: int = Field(default=4, ge=1, le=50)
    #: criu for hibernate/fork; default: .cache/criu/bin/criu (scripts/criu.sh), then PATH.
    criu_binary: str | None = None

    # Resource limits for a sandbox (Conway's ranges by default).
    vcpu_min: float = 1
    vcpu_max: float = 4
    vcpu_default: float = 1
    memory_mb_min: int = 512
    memory_mb_max: int = 8192
    memory_mb_default: int = 512
    disk_gb_min: int = 1
    disk_gb_max: int = 50
    disk_gb_default: int = 1
    pids_limit: int = 1024
    regions: list[str] = Field(default_factory=lambda: ["eu-north", "us-east"])
    default_region: str = "eu-north"

    # Warm pool: sandboxes started ahead, so a create hands one out at once.
    #: Ready sandboxes kept per pooled template, with the default limits and disk
    #: size (creates asking another disk size start cold); 0 turns the pool off.
    pool_size: int = Field(default=2, ge=0, le=256)
    pool_templates: list[str] = Field(default_factory=lambda: ["base"])
    #: Seconds after a hand-out before the refill starts a sandbox, while at
    #: least half the pool is left: a start would slow the first commands in
    #: the sandbox just handed out.
    pool_refill_delay: float = Field(default=0.2, ge=0, le=60)

    # Sandbox networking: each sandbox gets a /30 of network_cidr (its host
    # side is its gateway and DNS address); DNS goes to network_dns, by default
    # the host's own (non-loopback) resolvers.
    network_cidr: str = "10.231.0.0/16"
    network_dns: list[str] = Field(default_factory=list)

    # Lifetimes, in seconds.
    default_timeout: int = 300
    max_timeout: int = 7 * 24 * 3600
    exec_timeout_max: int = 24 * 3600
    #: Bytes of stdout and of stderr a synchronous exec returns; the rest is cut.
    exec_max_output: int = 64 * 1024 * 1024
    #: Bytes of stdout and of stderr a process keeps in its sandbox for replay
    #: (background and streamed); live readers also get what comes later.
    process_max_output: int = 16 * 1024 * 1024
    sweep_interval: float = 1.0

    # Default per-tenant quotas (overridable per tenant through the admin API).
    quota_max_sandboxes: int = 50
    quota_max_vcpu: float = 100
    quota_max_memory_mb: int = 128 * 1024

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'sandbank.db'}"

    @property
    def template_root(self) -> Path:
        return self.templates_dir or self.data_dir / "templates"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
