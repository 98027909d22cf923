"""The VM state machine: every state a VM row can be in and, in one table, which action may
start from which state. Services check transitions here; nothing else lists states."""

from __future__ import annotations

from typing import Literal, get_args

from nexus.core.errors import Conflict

VmStateName = Literal[
    "pending",
    "creating",
    "starting",
    "running",
    "paused",
    "stopping",
    "stopped",
    "failed",
    "deleting",
]
VM_STATES: tuple[str, ...] = get_args(VmStateName)
#: States an operation is driving the VM through (the reconciler leaves them alone).
TRANSITIONAL = ("pending", "creating", "starting", "stopping", "deleting")

#: action -> the states it may start from (``act``'s actions, then the engine's others).
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "start": ("stopped", "failed"),
    "stop": ("running", "paused", "starting", "failed"),
    "reboot": ("running",),
    "pause": ("running",),
    "resume": ("paused",),
    # vcpus/memory change, volume attach/detach: applied at the next boot
    "resize": ("stopped", "failed"),
    "attach": ("stopped", "failed"),
}
#: The actions of ``POST /v1/vms/{id}/{action}``.
ACTIONS = ("start", "stop", "reboot", "pause", "resume")


def allows(state: str, action: str) -> bool:
    """True if ``action`` may start while the VM is in ``state``."""
    return state in ALLOWED_FROM[action]


def ensure_allowed(name: str, state: str, action: str) -> None:
    """Raise :class:`Conflict` unless ``action`` may start from ``state``."""
    if not allows(state, action):
        raise Conflict(
            f"cannot {action} vm '{name}' while it is {state} "
            f"(allowed from: {', '.join(ALLOWED_FROM[action])})"
        )


def in_transition(state: str) -> bool:
    """True while an operation should be driving a VM in ``state``."""
    return state in TRANSITIONAL
