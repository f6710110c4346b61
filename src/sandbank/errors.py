"""The one error tree shared by the server, the SDK and the agent.

Every class carries a stable string ``code`` and the HTTP ``status`` it maps to.
The server turns any ``SandbankError`` into ``{"code", "message"}`` with that
status; the SDK turns the ``code`` back into the same class (``from_code``).
Stdlib only: the agent imports this module inside sandboxes.

    SandbankError (internal_error, 500)
    ├── BadRequest (bad_request, 400)
    │   ├── ValidationFailed (invalid_request, 422)
    │   │   └── TemplateBuildFailed (template_build_failed, 422)
    │   ├── InvalidPath (invalid_path, 400)
    │   ├── IsADirectory (is_a_directory, 400)
    │   └── NotADirectory (not_a_directory, 400)
    ├── Unauthorized (unauthorized, 401)
    ├── Forbidden (forbidden, 403)
    │   └── PermissionDenied (permission_denied, 403)
    ├── NotFound (not_found, 404)
    │   ├── SandboxNotFound (sandbox_not_found, 404)
    │   ├── TemplateNotFound (template_not_found, 404)
    │   ├── FileNotFound (file_not_found, 404)
    │   ├── ProcessNotFound (process_not_found, 404)
    │   ├── SnapshotNotFound (snapshot_not_found, 404)
    │   └── KeyNotFound (key_not_found, 404)
    ├── Conflict (conflict, 409)
    │   ├── InvalidState (invalid_state, 409)
    │   │   └── SandboxPaused (sandbox_paused, 409)
    │   └── FileExists (file_exists, 409)
    ├── PayloadTooLarge (payload_too_large, 413)
    ├── QuotaExceeded (quota_exceeded, 429)
    ├── DiskFull (disk_full, 507)
    ├── BadGateway (bad_gateway, 502)
    │   └── PortUnreachable (port_unreachable, 502)
    ├── SandboxUnavailable (sandbox_unavailable, 503)
    ├── Timeout (timeout, 504)
    │   └── SandboxNotReady (sandbox_not_ready, 504)
    └── RuntimeFailure (runtime_error, 500)
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # the agent imports this module; importing typing costs it ~9 ms
    from typing import Any, ClassVar


class SandbankError(Exception):
    """Root of every error sandbank raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(SandbankError):
    code = "bad_request"
    status = 400


class ValidationFailed(BadRequest):
    code = "invalid_request"
    status = 422


class InvalidPath(BadRequest):
    code = "invalid_path"


class IsADirectory(BadRequest):
    code = "is_a_directory"


class NotADirectory(BadRequest):
    code = "not_a_directory"


class NotText(BadRequest):
    """A text read of data that does not decode in the asked-for encoding."""

    code = "not_text"


class Unauthorized(SandbankError):
    code = "unauthorized"
    status = 401


class Forbidden(SandbankError):
    code = "forbidden"
    status = 403


class PermissionDenied(Forbidden):
    code = "permission_denied"


class NotFound(SandbankError):
    code = "not_found"
    status = 404


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class ProcessNotFound(NotFound):
    code = "process_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class Conflict(SandbankError):
    code = "conflict"
    status = 409


class InvalidState(Conflict):
    code = "invalid_state"


class SandboxPaused(InvalidState):
    code = "sandbox_paused"


class CheckpointFailed(Conflict):
    """The sandbox holds state a checkpoint cannot save; it was left as it was."""

    code = "checkpoint_failed"


class FileExists(Conflict):
    code = "file_exists"


class PayloadTooLarge(SandbankError):
    code = "payload_too_large"
    status = 413


class QuotaExceeded(SandbankError):
    code = "quota_exceeded"
    status = 429


class DiskFull(SandbankError):
    code = "disk_full"
    status = 507


class BadGateway(SandbankError):
    code = "bad_gateway"
    status = 502


class PortUnreachable(BadGateway):
    """Nothing answers on a sandbox port a preview URL points at."""

    code = "port_unreachable"


class Unsupported(SandbankError):
    """The sandbox's runtime does not offer the operation."""

    code = "unsupported"
    status = 501


class SandboxUnavailable(SandbankError):
    code = "sandbox_unavailable"
    status = 503


class CheckpointUnsupported(SandbankError):
    """Hibernate and fork need a working CRIU, which this host lacks (the message says why)."""

    code = "checkpoint_unsupported"
    status = 501


class Timeout(SandbankError):
    code = "timeout"
    status = 504


class SandboxNotReady(Timeout):
    """A template's ready check did not pass in time in a new sandbox."""

    code = "sandbox_not_ready"


class TemplateBuildFailed(ValidationFailed):
    """A step of a template build failed; the build's log says why."""

    code = "template_build_failed"
    status = 422


class RuntimeFailure(SandbankError):
    code = "runtime_error"
    status = 500


def _all_classes() -> dict[str, type[SandbankError]]:
    table: dict[str, type[SandbankError]] = {}
    pending: list[type[SandbankError]] = [SandbankError]
    while pending:
        cls = pending.pop()
        table[cls.code] = cls
        pending.extend(cls.__subclasses__())
    return table


#: code -> class; the single table both directions use.
ERRORS_BY_CODE: dict[str, type[SandbankError]] = _all_classes()


def from_code(code: str, message: str, **details: Any) -> SandbankError:
    """Rebuild the error a peer reported; unknown codes keep their code text."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message, **details)
    err = SandbankError(message, **details)
    err.code = code  # type: ignore[misc]
    return err


def from_status(status: int, code: str, message: str, **details: Any) -> SandbankError:
    """Like ``from_code``, falling back to the class of the HTTP status."""
    if code in ERRORS_BY_CODE:
        return from_code(code, message, **details)
    for cls in ERRORS_BY_CODE.values():
        if cls.status == status and cls.__base__ is SandbankError:
            err = cls(message, **details)
            break
    else:
        err = SandbankError(message, **details)
    err.code = code  # type: ignore[misc]
    return err
