"""The reconciler: drives actual VM state toward desired state and records drift.

Runs in the replica holding the ``reconciler`` lease. Every ``reconcile_interval_s`` it asks
each healthy host's agent for the VMs it really has (``loop_concurrency`` agents at a time,
over the shared agent pool), then:

* updates a VM row whose actual state differs (e.g. the guest powered itself off, the VMM
  crashed, the agent restarted and re-adopted it) and records the reason;
* settles VMs left in a transitional state with no operation driving them (manager restart,
  agent killed mid-create): to the agent's actual state, or ``failed`` with a reason;
* removes VMs the agent has but the database does not know (orphans of an interrupted
  create or delete): VMM process, disk and sockets.

Heartbeats carry every VM's status too (and an agent sends one at once when a VM's state
changes), so at a thousand hosts the reconciler does not call every agent on every pass: a
host whose latest heartbeat arrived after the reconciler last called its agent, and agrees
with the database (no drift, no VM the database does not know), is skipped — for at most
``reconcile_full_poll_s`` (half to all of it, by host, so that these calls don't fall due
together), after which the agent is asked again whatever its heartbeats say.
Any disagreement is checked with a real call before anything is written.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from nexus.core.logging import get_logger
from nexus.core.timeutil import as_utc, utcnow
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.models import VmStatus
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.states import TRANSITIONAL
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.fanout import spread

log = get_logger(__name__)
LEASE = "reconciler"
T = TypeVar("T")
ORPHAN_GRACE = timedelta(seconds=30)


def _actual_state(st: VmStatus) -> str:
    return {"starting": "starting", "stopping": "stopping"}.get(st.state, st.state)


async def _record_reachability(state: ManagerState, host_rows: list[Host]) -> None:
    """Store each host's health verdict when it changed: a ``host.offline`` event when its
    heartbeats stopped, ``host.online`` when they came back (the outbox writes them)."""
    timeout = state.settings.host_heartbeat_timeout_s
    changed = {
        h.id: ok for h in host_rows if h.reachable is not (ok := hosts.is_healthy(h, timeout))
    }
    if not changed:
        return
    async with state.db.session() as s:
        for host_id, ok in changed.items():
            row = await s.get(Host, host_id)
            if row is not None and row.reachable is not ok:
                row.reachable = ok
                if not ok:
                    log.warning("reconciler.host_offline", host=row.name)


async def reconcile_once(state: ManagerState, spread_s: float = 0.0) -> dict[str, int]:
    """One pass over every healthy host (the agent calls' starts spread over ``spread_s``).
    Returns counters (for tests and logs). The hosts and their VM rows are read in two
    queries per pass; a host's VMs are written only when one drifted."""
    counts = {"updated": 0, "orphans_removed": 0, "settled": 0, "skipped": 0}
    async with state.db.session() as s:
        host_rows: list[Host] = await _read_all(s, select(Host).options(defer(Host.facts)))
        busy_ids = set(
            (
                await s.execute(
                    select(Operation.resource_id).where(
                        Operation.status.in_(("pending", "running")),
                        Operation.resource_type == "vm",
                    )
                )
            ).scalars()
        )
    await _record_reachability(state, host_rows)
    healthy = [h for h in host_rows if hosts.is_healthy(h, state.settings.host_heartbeat_timeout_s)]
    by_host: dict[str, list[Vm]] = {h.id: [] for h in healthy}
    if healthy:
        async with state.db.session() as s:
            for vm in await _read_all(s, select(Vm).where(Vm.host_id.is_not(None))):
                if vm.host_id in by_host:
                    by_host[vm.host_id].append(vm)
    polled: dict[str, datetime] = state.extras.setdefault("reconciler_polled", {})
    full_poll = timedelta(seconds=state.settings.reconcile_full_poll_s)
    now = utcnow()
    to_call = []
    for h in healthy:
        last = polled.get(h.id)
        if (
            last is not None
            and now - last < full_poll * _spread_factor(h.id)
            and h.last_heartbeat_at is not None
            and as_utc(h.last_heartbeat_at) > last
            and _heartbeat_agrees(h, by_host[h.id], busy_ids)
        ):
            counts["skipped"] += 1
            continue
        to_call.append(h)
    await spread(
        to_call,
        lambda host: _reconcile_host(state, host, by_host[host.id], busy_ids, counts),
        concurrency=state.settings.loop_concurrency,
        period_s=spread_s,
        gauge="reconciler",
    )
    return counts


READ_CHUNK = 250
"""Rows turned into objects at a time when a pass reads every host and VM: the event loop
serves requests between chunks instead of stalling for the whole table."""


async def _read_all(s: AsyncSession, q: Select[T]) -> list[T]:
    result = await s.stream_scalars(q.execution_options(yield_per=READ_CHUNK))
    out: list[T] = []
    async for part in result.partitions(READ_CHUNK):
        out.extend(part)
        await asyncio.sleep(0)
    return out


def _spread_factor(host_id: str) -> float:
    """From 0.5 to 1.0, fixed per host: the forced calls of ``reconcile_full_poll_s`` are spread
    over time instead of coming due for every host in the same pass."""
    return 0.5 + (zlib.crc32(host_id.encode()) % 1000) / 2000


def _heartbeat_agrees(host: Host, vms: list[Vm], busy_ids: set[str | None]) -> bool:
    """Whether the VM states of ``host``'s latest heartbeat match its rows: no drift, and no
    VM the database does not know (an orphan or a create in flight: checked by a call)."""
    try:
        reported = {
            st.id: st for st in (VmStatus.model_validate(v) for v in (host.vm_states or []))
        }
    except ValueError:
        return False
    known = {vm.id for vm in vms}
    if any(vm_id not in known and vm_id not in busy_ids for vm_id in reported):
        return False
    return not any(
        vm.id not in busy_ids and _drifted(vm, reported.get(vm.id)) is not None for vm in vms
    )


def _drifted(vm: Vm, st: VmStatus | None) -> tuple[str, str | None] | None:
    """The new (state, reason) of a VM row that drifted from what its agent reports."""
    new_state, reason = _decide(vm, st)
    if new_state is None or (new_state == vm.state and reason == vm.state_reason):
        return None
    return new_state, reason


async def _reconcile_host(
    state: ManagerState,
    host: Host,
    vms: list[Vm],
    busy_ids: set[str | None],
    counts: dict[str, int],
) -> None:
    """Reconcile the VMs of one healthy host (``vms``: its rows, read at the start of the
    pass) against what its agent reports."""
    called = utcnow()
    try:
        actual = {v.id: v for v in await hosts.agent_client(state, host).list_vms()}
        state.extras.setdefault("reconciler_polled", {})[host.id] = called
    except AgentError as exc:
        log.warning("reconciler.agent_unreachable", host=host.name, error=exc.detail)
        metrics.RECONCILER_ACTIONS.labels("agent_unreachable").inc()
        return
    known = {vm.id for vm in vms}
    drift = [vm.id for vm in vms if vm.id not in busy_ids and _drifted(vm, actual.get(vm.id))]
    if drift:
        async with state.db.session() as s:
            for vm_id in drift:
                vm = await s.get(Vm, vm_id)  # the row now: it may have moved on meanwhile
                if vm is None or vm.host_id != host.id:
                    continue
                st = actual.get(vm.id)
                change = _drifted(vm, st)
                if change is None:
                    continue
                new_state, reason = change
                log.info("reconciler.drift", vm_id=vm.id, was=vm.state, now=new_state)
                if vm.state in TRANSITIONAL:
                    counts["settled"] += 1
                counts["updated"] += 1
                before = {"state": vm.state}
                if new_state != vm.state:
                    metrics.VM_TRANSITIONS.labels(vm.state, new_state).inc()
                vm.state = new_state
                vm.state_reason = reason
                if st is not None:
                    vm.pid = st.pid
                    vm.ready_at = st.ready_at
                if new_state == "deleting" and st is None:
                    await s.delete(vm)
                audit.record(
                    s,
                    actor=None,
                    action=_audit_action(st, reason),
                    resource_type="vm",
                    resource_id=vm.id,
                    before=before,
                    after={"state": new_state, "reason": reason},
                )
    for vm_id, st in actual.items():
        if vm_id in known or vm_id in busy_ids:
            continue
        if not await _orphan_old_enough(state, host, vm_id):
            continue
        log.warning("reconciler.orphan", host=host.name, vm_id=vm_id, state=st.state)
        try:
            await hosts.agent_client(state, host).delete_vm(vm_id)
            counts["orphans_removed"] += 1
        except AgentError as exc:
            log.warning("reconciler.orphan_delete_failed", vm_id=vm_id, error=exc.detail)


async def _orphan_old_enough(state: ManagerState, host: Host, vm_id: str) -> bool:
    """Orphans are removed after a grace period (a create may be committing right now)."""
    seen = state.extras.setdefault("orphans_seen", {})
    first = seen.setdefault((host.id, vm_id), utcnow())
    if utcnow() - first >= ORPHAN_GRACE or state.extras.get("reconciler_no_grace"):
        seen.pop((host.id, vm_id), None)
        return True
    return False


GUEST_CHANNEL_REASON = "the host dropped the guest channel: "


def _audit_action(st: VmStatus | None, reason: str | None) -> str:
    """``vm.guest.disconnected`` for a guest cut off for flooding or breaking the channel
    protocol (a security event worth its own action), ``vm.reconcile`` otherwise."""
    if st is not None and reason is not None and reason.startswith(GUEST_CHANNEL_REASON):
        return "vm.guest.disconnected"
    return "vm.reconcile"


def _decide(vm: Vm, st: VmStatus | None) -> tuple[str | None, str | None]:
    """The state a VM row should have given what the agent reports (None: leave it)."""
    if vm.state == "deleting":
        return ("deleting", None) if st is None else (None, None)
    if st is None:
        if vm.state in ("pending", "creating", "starting"):
            return "failed", "interrupted before the host created the VM; delete and recreate it"
        if vm.state in ("running", "paused", "stopping"):
            return "failed", "the host no longer knows this VM (host state lost)"
        return None, None
    actual = _actual_state(st)
    if actual == "failed":
        reason = st.error or "the VMM failed"
        if st.console_tail:
            reason += "\n--- console tail ---\n" + st.console_tail[-2000:]
        return "failed", reason
    if st.guest_channel_error and actual == vm.state and actual in ("running", "paused"):
        return actual, GUEST_CHANNEL_REASON + st.guest_channel_error
    if actual == "running" and not st.guest_ready and vm.state in ("running",):
        return None, None
    if actual == "stopped" and vm.state in ("running", "paused", "starting", "stopping"):
        why = None if vm.desired_state == "stopped" else "the guest stopped on its own"
        return "stopped", why
    if actual != vm.state:
        return actual, None
    return None, None


async def reconcile_pass(state: ManagerState) -> None:
    """One leased pass, counted in the metrics."""
    counts = await reconcile_once(state, spread_s=state.settings.reconcile_interval_s / 2)
    metrics.RECONCILER_RUNS.inc()
    for action, n in counts.items():
        if n:
            metrics.RECONCILER_ACTIONS.labels(action).inc(n)


async def run(state: ManagerState) -> None:
    """The loop: every ``reconcile_interval_s``, a pass in the replica holding the lease."""
    await run_leased(state, LEASE, state.settings.reconcile_interval_s, reconcile_pass)


async def start(state: ManagerState) -> None:
    """Start-up hook: run the loop in the background."""
    state.spawn(run(state), name="reconciler")
