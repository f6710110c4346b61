"""Request bodies of the file-tree endpoints (chmod, chown)."""

from __future__ import annotations

from pydantic import Field

from sandbank.protocol.api import Strict


class ChmodRequest(Strict):
    path: str = Field(min_length=1)
    #: Permission bits, e.g. 0o755 (493); the JSON body carries a plain integer.
    mode: int = Field(ge=0, le=0o7777)


class ChownRequest(Strict):
    path: str = Field(min_length=1)
    #: A user name or a uid; None leaves the owner as it is.
    owner: str | int | None = None
    #: A group name or a gid; None leaves the group as it is.
    group: str | int | None = None
    recursive: bool = False
