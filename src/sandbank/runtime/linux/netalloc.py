"""Address allocation of sandbox networks: a /30 per sandbox, found free in
the kernel under a host-wide lock (see ``network``)."""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = Path("/run/sandbank/network.lock")


@dataclass(frozen=True)
class Attachment:
    """A sandbox's addresses: its own, and the host side it routes (and resolves) through."""

    address: str
    gateway: str

    def resolv_conf(self) -> str:
        return f"# written by sandbank: DNS goes through the host\nnameserver {self.gateway}\n"


def slot_addresses(cidr: ipaddress.IPv4Network, slot: int) -> Attachment:
    base = int(cidr.network_address) + 4 * slot
    return Attachment(
        address=str(ipaddress.IPv4Address(base + 2)), gateway=str(ipaddress.IPv4Address(base + 1))
    )


def pick_slot(used: set[int], slots: int, start: int) -> int | None:
    """The first free slot from ``start`` on, wrapping; a rotating start keeps a
    just-freed address (and conntrack state about it) from being reused at once."""
    for i in range(slots):
        slot = (start + i) % slots
        if slot not in used:
            return slot
    return None


class HostLock:
    """The host-wide lock on address allocation (an flock; taken off the event loop)."""

    def __init__(self) -> None:
        self._fd = -1

    async def __aenter__(self) -> None:
        LOCK_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise

    async def __aexit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing releases the lock
