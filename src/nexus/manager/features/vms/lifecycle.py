"""The VM engine: the work that drives a VM on its host, run inside operations.

Snapshots, templates (and later containers, functions, groups) drive VMs only through this
module, :mod:`.placement`, :mod:`.spec` and :mod:`.states`:

* :func:`start_operation` — commit an operation for a VM and run it (one per VM at a time);
* :func:`provision`, :func:`boot`, :func:`run_action`, :func:`remove` — the work;
* :func:`set_state`, :func:`wait_ready`, :func:`load` — the pieces they share.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError, AgentNotFound
from nexus.hostapi.models import VmStatus
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images.models import Image
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.vms import placement, spec
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal


async def load(state: ManagerState, vm_id: str) -> tuple[Vm, Host | None, Image]:
    """The VM, its host (None before placement) and its image, read in their own session."""
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None:
            raise NotFound(f"vm '{vm_id}' vanished")
        host = await s.get(Host, vm.host_id) if vm.host_id else None
        img = await s.get(Image, vm.image_id)
        if img is None:
            raise NotFound(f"image '{vm.image_id}' vanished")
        return vm, host, img


async def set_state(state: ManagerState, vm_id: str, new: str, **values: Any) -> None:
    """Record a VM's actual state (and optional columns) in its own transaction."""
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None:
            return
        if vm.state != new:
            metrics.VM_TRANSITIONS.labels(vm.state, new).inc()
        vm.state = new
        for k, v in values.items():
            setattr(vm, k, v)


async def wait_ready(state: ManagerState, host: Host, vm_id: str) -> VmStatus:
    """Poll the agent until the guest is ready (running + guest agent answered) or failed."""
    client = hosts.agent_client(state, host)
    deadline = asyncio.get_running_loop().time() + state.settings.boot_timeout_s
    delay = 0.05
    while True:
        st = await client.get_vm(vm_id)
        if st.state == "failed" or (st.state == "running" and st.guest_ready):
            return st
        if st.state in ("stopped",):
            return st
        if asyncio.get_running_loop().time() > deadline:
            return st
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def failure_reason(st: VmStatus) -> str:
    """Why a boot failed: the agent's error and the console tail."""
    reason = st.error or f"VM ended in state {st.state}"
    if st.console_tail:
        reason += "\n--- console tail ---\n" + st.console_tail[-2000:]
    return reason


def _boot_done(began: float, outcome: str) -> None:
    """Record a boot's duration; a boot that did not reach ``running`` counts as a failure."""
    if outcome not in ("ready", "running"):
        outcome = "failed"
        metrics.VM_START_FAILURES.inc()
    metrics.VM_BOOT_DURATION.labels(outcome).observe(time.perf_counter() - began)


async def boot(state: ManagerState, vm_id: str, progress: operations.Progress) -> dict[str, Any]:
    """Start the VM on its host and wait for its guest agent (inside an operation)."""
    _vm, host, _ = await load(state, vm_id)
    if host is None:
        raise Conflict("the VM has no host")
    await set_state(state, vm_id, "starting", state_reason=None, desired_state="running")
    await progress(60, "starting the VMM")
    client = hosts.agent_client(state, host)
    began = time.perf_counter()
    try:
        st = await client.start_vm(vm_id)
        await progress(75, "waiting for the guest agent")
        if not st.guest_ready and st.state != "failed":
            st = await wait_ready(state, host, vm_id)
    except AgentError as exc:
        _boot_done(began, "failed")
        await set_state(state, vm_id, "failed", state_reason=agent_problem(exc, "start").detail)
        raise agent_problem(exc, "start") from exc
    _boot_done(began, "ready" if st.state == "running" and st.guest_ready else st.state)
    if st.state == "running" and st.guest_ready:
        await set_state(
            state,
            vm_id,
            "running",
            pid=st.pid,
            ready_at=st.ready_at,
            started_at=utcnow(),
            state_reason=None,
        )
        return {"vm_id": vm_id, "state": "running"}
    if st.state == "running":
        reason = f"guest agent did not answer within {state.settings.boot_timeout_s:.0f} s"
        await set_state(
            state, vm_id, "running", pid=st.pid, state_reason=reason, started_at=utcnow()
        )
        return {"vm_id": vm_id, "state": "running", "warning": reason}
    reason = failure_reason(st)
    await set_state(state, vm_id, "failed", state_reason=reason, pid=None)
    raise Conflict(f"the VM failed to boot: {reason}")


async def provision(
    state: ManagerState, vm_id: str, start: bool, progress: operations.Progress
) -> dict[str, Any]:
    """Place the VM if needed, hand its spec to the host, and boot it if ``start``."""
    vm, host, img = await load(state, vm_id)
    await progress(10, "placing the VM")
    if host is None:
        async with state.db.session() as s:
            host = await placement.place(
                s, state, vm.vcpus, vm.memory_mib, vm.disk_size_mib or img.rootfs_size_mib
            )
            row = await s.get(Vm, vm_id)
            if row is not None:
                row.host_id = host.id
    await set_state(state, vm_id, "creating")
    await progress(30, f"preparing disk on host {host.name}")
    vm_spec = await spec.complete_spec(state, spec.base_spec(vm, img))
    try:
        await hosts.agent_client(state, host).put_vm(vm_spec)
    except AgentError as exc:
        p = agent_problem(exc, "create")
        await set_state(state, vm_id, "failed", state_reason=p.detail)
        raise p from exc
    if not start:
        await set_state(state, vm_id, "stopped", desired_state="stopped")
        return {"vm_id": vm_id, "state": "stopped"}
    return await boot(state, vm_id, progress)


async def run_action(
    state: ManagerState, vm_id: str, action: str, force: bool, progress: operations.Progress
) -> dict[str, Any]:
    """Run one of :data:`~nexus.manager.features.vms.states.ACTIONS` on the VM's host."""
    if action == "start":
        return await boot(state, vm_id, progress)
    _vm, host, _ = await load(state, vm_id)
    if host is None:
        raise Conflict("the VM has no host")
    client = hosts.agent_client(state, host)
    try:
        if action == "stop":
            await set_state(state, vm_id, "stopping", desired_state="stopped")
            await progress(30, "forcing off" if force else "ACPI shutdown")
            st = await client.stop_vm(vm_id, force=force, timeout_s=state.settings.stop_timeout_s)
            await set_state(state, vm_id, "stopped", pid=None, ready_at=None, state_reason=None)
            return {"vm_id": vm_id, "state": st.state}
        if action == "pause":
            st = await client.pause_vm(vm_id)
            await set_state(state, vm_id, "paused", desired_state="paused")
        elif action == "resume":
            st = await client.resume_vm(vm_id)
            await set_state(state, vm_id, "running", desired_state="running")
        elif action == "reboot":
            await set_state(state, vm_id, "starting")
            st = await client.reboot_vm(vm_id)
            if not st.guest_ready:
                st = await wait_ready(state, host, vm_id)
            await set_state(state, vm_id, "running", pid=st.pid, ready_at=st.ready_at)
        else:
            raise BadRequest(f"unknown action {action}")
    except AgentError as exc:
        p = agent_problem(exc, action)
        # Re-read the truth from the agent so the row does not lie.
        try:
            st = await client.get_vm(vm_id)
            await set_state(state, vm_id, st.state, state_reason=p.detail)
        except AgentError:
            await set_state(state, vm_id, "failed", state_reason=p.detail)
        raise p from exc
    return {"vm_id": vm_id, "state": st.state}


async def remove(state: ManagerState, vm_id: str, progress: operations.Progress) -> dict[str, Any]:
    """Delete the VM from its host, then its row."""
    _vm, host, _ = await load(state, vm_id)
    await set_state(state, vm_id, "deleting", desired_state="deleted")
    if host is not None:
        await progress(30, "removing the VM from its host")
        try:
            await hosts.agent_client(state, host).delete_vm(vm_id)
        except AgentNotFound:
            pass
        except AgentError as exc:
            p = agent_problem(exc, "delete")
            await set_state(state, vm_id, "failed", state_reason=p.detail)
            raise p from exc
    async with state.db.session() as s:
        row = await s.get(Vm, vm_id)
        if row is not None:
            await s.delete(row)
    return {"vm_id": vm_id, "deleted": True}


async def start_operation(
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Vm,
    kind: str,
    work: operations.Work,
) -> Operation:
    """Commit an operation for ``vm`` and start it; one operation per VM at a time."""
    running = await db_session.execute(
        select(Operation.id).where(
            Operation.resource_id == vm.id, Operation.status.in_(("pending", "running"))
        )
    )
    if running.first() is not None:
        raise Conflict(f"vm '{vm.name}' is busy with another operation; try again shortly")
    op = operations.create(
        db_session, principal=principal, kind=kind, resource_type="vm", resource_id=vm.id
    )
    await db_session.commit()
    operations.start(state, op.id, work, kind=kind, context={"vm_id": vm.id})
    return op
