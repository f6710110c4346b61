"""Resource limits per sandbox and quotas per tenant."""

from __future__ import annotations

from dataclasses import dataclass

from sandbank.errors import QuotaExceeded, ValidationFailed
from sandbank.server.service.params import CreateParams, Resolved
from sandbank.server.store.base import QuotaRecord, TenantUsage


@dataclass(frozen=True)
class Limits:
    """What one sandbox may ask for (the operator's settings)."""

    vcpu_min: float
    vcpu_max: float
    vcpu_default: float
    memory_mb_min: int
    memory_mb_max: int
    memory_mb_default: int
    disk_gb_min: int
    disk_gb_max: int
    disk_gb_default: int
    regions: tuple[str, ...]
    default_region: str
    default_timeout: int
    max_timeout: int
    exec_timeout_max: int
    pids_limit: int
    exec_max_output: int = 64 * 1024 * 1024
    #: Bytes of each stream a process (background or streamed) keeps for replay.
    process_max_output: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Quota:
    max_sandboxes: int
    max_vcpu: float
    max_memory_mb: int

    def merged(self, override: QuotaRecord | None) -> Quota:
        if override is None:
            return self
        return Quota(
            max_sandboxes=(
                self.max_sandboxes if override.max_sandboxes is None else override.max_sandboxes
            ),
            max_vcpu=self.max_vcpu if override.max_vcpu is None else override.max_vcpu,
            max_memory_mb=(
                self.max_memory_mb if override.max_memory_mb is None else override.max_memory_mb
            ),
        )


def _check_range(name: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        raise ValidationFailed(
            f"{name} must be between {low:g} and {high:g}{unit}, got {value:g}{unit}",
            field=name,
        )


def check_resources(limits: Limits, vcpu: float, memory_mb: int, disk_gb: int) -> None:
    _check_range("vcpu", vcpu, limits.vcpu_min, limits.vcpu_max)
    _check_range("memory_mb", memory_mb, limits.memory_mb_min, limits.memory_mb_max, " MB")
    _check_range("disk_gb", disk_gb, limits.disk_gb_min, limits.disk_gb_max, " GB")


def check_timeout(limits: Limits, seconds: int) -> None:
    if not 1 <= seconds <= limits.max_timeout:
        raise ValidationFailed(
            f"timeout must be between 1 and {limits.max_timeout} seconds, got {seconds}",
            field="timeout",
        )


def check_region(limits: Limits, region: str) -> None:
    if region not in limits.regions:
        raise ValidationFailed(
            f"unknown region {region!r}; available: {', '.join(limits.regions)}", field="region"
        )


def resolve(limits: Limits, params: CreateParams) -> Resolved:
    """Fill in the defaults and reject what the limits do not allow (422)."""
    resolved = Resolved(
        template=params.template,
        name=params.name,
        vcpu=limits.vcpu_default if params.vcpu is None else params.vcpu,
        memory_mb=limits.memory_mb_default if params.memory_mb is None else params.memory_mb,
        disk_gb=limits.disk_gb_default if params.disk_gb is None else params.disk_gb,
        region=params.region or limits.default_region,
        timeout=limits.default_timeout if params.timeout is None else params.timeout,
        env=dict(params.env),
        metadata=dict(params.metadata),
        network=params.network,
    )
    check_resources(limits, resolved.vcpu, resolved.memory_mb, resolved.disk_gb)
    check_region(limits, resolved.region)
    check_timeout(limits, resolved.timeout)
    return resolved


def check_quota(tenant: str, quota: Quota, usage: TenantUsage, vcpu: float, memory_mb: int) -> None:
    """Raise 429 naming the limit and the current use if one more sandbox
    of this size would go over the tenant's quota."""
    if usage.sandboxes + 1 > quota.max_sandboxes:
        raise QuotaExceeded(
            f"tenant {tenant!r} has {usage.sandboxes} of {quota.max_sandboxes} allowed "
            "concurrent sandboxes; delete one or ask for a higher quota",
            limit="max_sandboxes",
            current=usage.sandboxes,
            maximum=quota.max_sandboxes,
        )
    if usage.vcpu + vcpu > quota.max_vcpu:
        raise QuotaExceeded(
            f"tenant {tenant!r} uses {usage.vcpu:g} of {quota.max_vcpu:g} vCPUs; "
            f"{vcpu:g} more would exceed the quota",
            limit="max_vcpu",
            current=usage.vcpu,
            maximum=quota.max_vcpu,
        )
    if usage.memory_mb + memory_mb > quota.max_memory_mb:
        raise QuotaExceeded(
            f"tenant {tenant!r} uses {usage.memory_mb} of {quota.max_memory_mb} MB of memory; "
            f"{memory_mb} MB more would exceed the quota",
            limit="max_memory_mb",
            current=usage.memory_mb,
            maximum=quota.max_memory_mb,
        )
