"""Output: JSON for scripts (``--json``), rich tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from sandbank.client import ApiKeyInfo, SandboxInfo, SandboxMetrics

#: Piped output is not cut at 80 columns: a truncated id is useless to a script.
_console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _remaining(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "due"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"in {hours}h{minutes:02d}m"
    return f"in {minutes}m{seconds:02d}s" if minutes else f"in {seconds}s"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _labels(metadata: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(metadata.items())) or "-"


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE, header_style="bold")
    for column in columns:
        # Ids are copied into other commands, so they never wrap.
        table.add_column(column, overflow="fold", no_wrap=column == "ID")
    return table


def _details(rows: Iterable[tuple[str, str]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    _console.print(table)


def sandboxes(infos: list[SandboxInfo]) -> None:
    table = _table(
        "ID", "NAME", "TEMPLATE", "STATUS", "VCPU", "MEMORY", "REGION", "EXPIRES", "LABELS"
    )
    for info in infos:
        table.add_row(
            info.id,
            info.name or "-",
            info.template,
            info.status,
            f"{info.vcpu:g}",
            f"{info.memory_mb} MiB",
            info.region,
            _remaining(info.expires_at),
            _labels(info.metadata),
        )
    _console.print(table)


def sandbox_or_json(info: SandboxInfo, as_json: bool) -> None:
    """One sandbox as --json asks, else as a table for people."""
    if as_json:
        print_json(info.to_dict())
    else:
        sandbox(info)


def sandbox(info: SandboxInfo) -> None:
    rows = [
        ("id", info.id),
        ("name", info.name or "-"),
        ("status", info.status),
        ("template", info.template),
        ("vcpu", f"{info.vcpu:g}"),
        ("memory", f"{info.memory_mb} MiB"),
        ("disk", f"{info.disk_gb} GiB"),
        ("region", info.region),
        ("labels", _labels(info.metadata)),
        ("created", f"{_when(info.created_at)} UTC"),
        ("expires", f"{_when(info.expires_at)} UTC ({_remaining(info.expires_at)})"),
        ("terminal", info.terminal_url or "-"),
    ]
    if info.killed_at is not None:
        rows.append(("killed", f"{_when(info.killed_at)} UTC ({info.kill_reason or '-'})"))
    if info.disk_bytes is not None:
        rows.append(("disk used", _bytes(info.disk_bytes)))
    if info.idle_timeout:
        rows.append(("idle", f"{info.on_timeout} after {info.idle_timeout}s"))
    if info.error:
        rows.append(("error", info.error))
    _details(rows)


def metrics(data: SandboxMetrics) -> None:
    _details(
        [
            ("cpu", f"{data.cpu_percent:.1f}% ({data.cpu_usage_seconds:.2f} s used)"),
            ("memory", f"{_bytes(data.memory_bytes)} of {_bytes(data.memory_limit_bytes)}"),
            ("disk", f"{_bytes(data.disk_bytes)} of {_bytes(data.disk_limit_bytes)}"),
            ("processes", f"{data.pids} of {data.pids_limit}"),
            ("at", f"{_when(data.timestamp)} UTC"),
        ]
    )


def keys(items: list[ApiKeyInfo]) -> None:
    table = _table("ID", "TENANT", "NAME", "PREFIX", "ADMIN", "CREATED", "REVOKED")
    for item in items:
        table.add_row(
            item.id,
            item.tenant,
            item.name or "-",
            item.prefix,
            "yes" if item.admin else "no",
            _when(item.created_at),
            _when(item.revoked_at),
        )
    _console.print(table)
