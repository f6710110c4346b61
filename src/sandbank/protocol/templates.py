"""Wire models of the template API: the declarative build spec and the requests
around it (server side; the SDK and CLI send plain JSON).

A spec is applied in a fixed order: apt packages, pip packages, files, run
steps; then the result is captured. ``env`` applies to the run steps and to
every sandbox of the template; ``start`` is started in the background in each
new sandbox and ``ready`` must pass before its create returns.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbank.protocol.api import _check_env

User = Literal["root", "user"]
PACKAGE_RE = r"^[A-Za-z0-9][A-Za-z0-9.+_:=<>~!,\[\]-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSpec(_Strict):
    content: str
    #: Permission bits, e.g. 0o755 (JSON: 493) or the string "0755".
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    user: User = "root"

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        return int(value, 8) if isinstance(value, str) else value


class RunStep(_Strict):
    run: str = Field(min_length=1, max_length=65536)
    user: User = "root"
    #: Seconds the step may take.
    timeout: float = Field(default=1800, gt=0, le=7200)


class StartSpec(_Strict):
    cmd: str = Field(min_length=1, max_length=65536)
    user: User = "user"


class ReadySpec(_Strict):
    cmd: str = Field(min_length=1, max_length=65536)
    #: Seconds a create waits for ``cmd`` to exit 0.
    timeout: float = Field(default=60, gt=0, le=600)


Package = Annotated[str, Field(pattern=PACKAGE_RE, max_length=200)]


class TemplateSpec(_Strict):
    base: str = "base"
    apt: list[Package] = Field(default_factory=list)
    #: sources.list lines for the build's apt (instead of the base's), e.g.
    #: ``deb [trusted=yes] http://mirror.internal/debian bookworm main``.
    apt_sources: list[str] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    pip_index_url: str | None = None
    #: Absolute path -> content (a string) or {content, mode, user}.
    files: dict[str, FileSpec | str] = Field(default_factory=dict)
    run: list[RunStep | str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    start: StartSpec | str | None = None
    ready: ReadySpec | str | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value) or {}

    @field_validator("files")
    @classmethod
    def _paths(cls, value: dict[str, FileSpec | str]) -> dict[str, FileSpec | str]:
        for path in value:
            if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
                raise ValueError(f"file path {path!r} must be absolute, without '..'")
        return value

    @field_validator("apt_sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for line in value:
            if "\n" in line or not line.startswith(("deb ", "deb-src ")):
                raise ValueError(f"apt source {line!r} is not one 'deb ...' line")
        return value


class BuildTemplateRequest(_Strict):
    name: str
    spec: TemplateSpec = Field(default_factory=TemplateSpec)
    aliases: list[str] = Field(default_factory=list)


class ImportTemplateRequest(_Strict):
    name: str
    #: An OCI layout tar or ``docker save`` tar on the server's host.
    path: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)


class AliasRequest(_Strict):
    alias: str


class SnapshotTemplateRequest(_Strict):
    name: str
    #: Id or name of one of the caller's snapshots.
    snapshot: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
