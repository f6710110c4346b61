"""Sandbox states and the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum

from sandbank.errors import InvalidState, SandboxPaused


class SandboxState(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    KILLING = "killing"
    KILLED = "killed"
    ERROR = "error"
    #: Started ahead of demand, owned by no tenant, waiting in the warm pool.
    POOLED = "pooled"
    #: Frozen by the caller (cgroup freezer): memory kept, no CPU until resumed.
    PAUSED = "paused"
    #: Processes being ended; the disk stays.
    STOPPING = "stopping"
    #: No process, no memory, no network: only the disk image is kept.
    STOPPED = "stopped"
    #: A stopped sandbox's container being made again on its disk.
    STARTING = "starting"
    #: Being saved to disk (CRIU); then hibernated: no process, no memory, only images.
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    #: Being restored from its images.
    WAKING = "waking"


S = SandboxState

#: state -> states it may move to.
TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    S.CREATING: frozenset({S.RUNNING, S.POOLED, S.ERROR, S.KILLING}),
    S.RUNNING: frozenset({S.KILLING, S.ERROR, S.PAUSED, S.STOPPING, S.HIBERNATING}),
    # A paused sandbox may be stopped: its frozen processes are killed as they are.
    S.PAUSED: frozenset({S.RUNNING, S.KILLING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED, S.ERROR, S.KILLING}),
    S.STOPPED: frozenset({S.STARTING, S.KILLING}),
    # A start that fails leaves the disk as it was: back to stopped.
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.ERROR, S.KILLING}),
    S.KILLING: frozenset({S.KILLED, S.ERROR}),
    S.ERROR: frozenset({S.KILLING}),
    S.KILLED: frozenset(),
    # A pool member is handed out straight to running, or retired.
    S.POOLED: frozenset({S.RUNNING, S.KILLING}),
    # Hibernation (service/checkpoints.py): a failed save goes back to running,
    # a failed restore back to hibernated.
    S.HIBERNATING: frozenset({S.HIBERNATED, S.RUNNING, S.KILLING, S.ERROR}),
    S.HIBERNATED: frozenset({S.WAKING, S.KILLING}),
    S.WAKING: frozenset({S.RUNNING, S.HIBERNATED, S.KILLING, S.ERROR}),
}

#: States that count against a tenant's quota. Pooled sandboxes hold host
#: resources too, but belong to no tenant until they are handed out; stopped
#: ones hold only their disk image, which no quota limits.
ACTIVE: frozenset[SandboxState] = frozenset(
    {S.CREATING, S.RUNNING, S.PAUSED, S.KILLING, S.STOPPING, S.STARTING}
)
#: Hibernated sandboxes keep their place in the quota: waking needs no new room.
ACTIVE |= {S.HIBERNATING, S.HIBERNATED, S.WAKING}

#: States a tenant may see or filter on; the pool is internal.
PUBLIC: frozenset[SandboxState] = frozenset(set(SandboxState) - {S.POOLED})

#: States listed by default (killed sandboxes are kept as records only).
VISIBLE: frozenset[SandboxState] = PUBLIC - {S.KILLED}

#: States with a disk image on the host that a snapshot can copy.
HAS_DISK: frozenset[SandboxState] = frozenset({S.RUNNING, S.PAUSED, S.STOPPED})


def sources_of(target: SandboxState) -> frozenset[SandboxState]:
    """Every state from which ``target`` can be reached."""
    return frozenset(src for src, dsts in TRANSITIONS.items() if target in dsts)


def can_move(current: str, target: SandboxState) -> bool:
    return target in TRANSITIONS.get(SandboxState(current), frozenset())


def _hint(state: SandboxState, sandbox_id: str) -> str:
    base = f"/v1/sandboxes/{sandbox_id}"
    return {
        S.CREATING: "wait until it is running",
        S.STARTING: "wait until it is running",
        S.KILLING: "it is being deleted",
        S.ERROR: "it failed; delete it and create a new one",
        S.STOPPING: f"wait until it is stopped, then start it (POST {base}/start)",
        S.STOPPED: f"start it first (POST {base}/start)",
        S.RUNNING: f"stop it first (POST {base}/stop)",
        S.HIBERNATED: f"wake it first (POST {base}/wake)",
        S.HIBERNATING: "it is being hibernated",
        S.WAKING: "it is waking up; try again in a moment",
    }.get(state, "")


def require(
    current: str, allowed: frozenset[SandboxState], operation: str, sandbox_id: str
) -> None:
    """Raise a 409 naming the state and what would work when ``operation``
    is not allowed in ``current``."""
    if SandboxState(current) in allowed:
        return
    allowed_text = ", ".join(sorted(s.value for s in allowed))
    if current == S.PAUSED:
        raise SandboxPaused(
            f"cannot {operation} sandbox {sandbox_id}: it is paused; resume it first "
            f"(POST /v1/sandboxes/{sandbox_id}/resume)",
            state=current,
            allowed_states=sorted(s.value for s in allowed),
        )
    hint = _hint(SandboxState(current), sandbox_id)
    if current == S.RUNNING and S.STOPPED not in allowed:
        hint = ""
    raise InvalidState(
        f"cannot {operation} sandbox {sandbox_id}: it is {current}"
        + (f"; {hint}" if hint else f"; it must be {allowed_text}"),
        state=current,
        allowed_states=sorted(s.value for s in allowed),
    )
