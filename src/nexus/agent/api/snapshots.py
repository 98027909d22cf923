"""The agent's snapshot, restore and clone routes (the work is
:mod:`nexus.agent.storage.snapshots`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from nexus.agent.runtime import AgentRuntime
from nexus.agent.storage.snapshots import (
    clone_vm,
    create_snapshot,
    delete_snapshot,
    list_snapshots,
    restore_as_new,
    restore_in_place,
)
from nexus.hostapi.models import (
    CloneRequest,
    CloneResult,
    RestoreNewRequest,
    RestoreRequest,
    RestoreResult,
    SnapshotInfo,
    SnapshotRequest,
)


def router(rt: AgentRuntime) -> APIRouter:
    """The snapshot/clone routes over ``rt`` (auth comes from the app)."""
    r = APIRouter()

    @r.post("/v1/vms/{vm_id}/snapshots", response_model=SnapshotInfo, summary="Snapshot a VM")
    async def snapshot(vm_id: str, body: SnapshotRequest) -> SnapshotInfo:
        return await create_snapshot(rt, vm_id, body)

    @r.post("/v1/vms/{vm_id}/restore", response_model=RestoreResult, summary="Restore a VM")
    async def restore(vm_id: str, body: RestoreRequest) -> RestoreResult:
        return await restore_in_place(rt, vm_id, body)

    @r.post("/v1/snapshots/{sid}/vms", response_model=RestoreResult, summary="New VM from one")
    async def restore_new(sid: str, body: RestoreNewRequest) -> RestoreResult:
        return await restore_as_new(rt, sid, body)

    @r.post("/v1/vms/{vm_id}/clone", response_model=CloneResult, summary="Clone a VM's disk")
    async def clone(vm_id: str, body: CloneRequest) -> CloneResult:
        return await clone_vm(rt, vm_id, body)

    @r.get("/v1/snapshots", response_model=list[SnapshotInfo], summary="Snapshots on host")
    async def list_() -> list[SnapshotInfo]:
        return list_snapshots(rt)

    @r.delete("/v1/snapshots/{sid}", status_code=204, summary="Delete a snapshot's files")
    async def delete(sid: str) -> Response:
        delete_snapshot(rt, sid)
        return Response(status_code=204)

    return r
