"""The agent's VM routes: host facts, VM specs, lifecycle, console tail."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from nexus.agent.api.problems import problem
from nexus.agent.runtime import AgentRuntime
from nexus.hostapi.models import HostFacts, VmSpec, VmStatus


def router(runtime: AgentRuntime) -> APIRouter:
    """The VM routes over ``runtime`` (auth comes from the app)."""
    r = APIRouter()

    @r.get("/v1/info", response_model=HostFacts, summary="Host facts and capacity")
    async def info() -> HostFacts:
        return runtime.facts()

    @r.get("/v1/vms", response_model=list[VmStatus], summary="All VMs on this host")
    async def list_vms() -> list[VmStatus]:
        return runtime.list()

    @r.put("/v1/vms/{vm_id}", response_model=VmStatus, summary="Create/update a VM (idempotent)")
    async def put_vm(vm_id: str, spec: VmSpec, request: Request) -> VmStatus | JSONResponse:
        if spec.id != vm_id:
            return problem(
                422,
                "validation-error",
                "Invalid request",
                f"body id {spec.id!r} does not match path {vm_id!r}",
                request,
            )
        return await runtime.put_vm(spec)

    @r.get("/v1/vms/{vm_id}", response_model=VmStatus, summary="One VM's status")
    async def get_vm(vm_id: str) -> VmStatus:
        return runtime.status(vm_id)

    @r.post("/v1/vms/{vm_id}/start", response_model=VmStatus, summary="Start the VMM")
    async def start_vm(vm_id: str) -> VmStatus:
        return await runtime.start_vm(vm_id)

    @r.post("/v1/vms/{vm_id}/stop", response_model=VmStatus, summary="Stop (ACPI, then kill)")
    async def stop_vm(
        vm_id: str,
        force: bool = Query(False, description="kill at once, no ACPI power-off"),
        timeout_s: float | None = Query(None, gt=0, le=600),
    ) -> VmStatus:
        return await runtime.stop_vm(vm_id, force=force, timeout=timeout_s)

    @r.post("/v1/vms/{vm_id}/reboot", response_model=VmStatus, summary="Reboot")
    async def reboot_vm(vm_id: str) -> VmStatus:
        return await runtime.reboot_vm(vm_id)

    @r.post("/v1/vms/{vm_id}/pause", response_model=VmStatus, summary="Freeze vCPUs")
    async def pause_vm(vm_id: str) -> VmStatus:
        return await runtime.pause_vm(vm_id)

    @r.post("/v1/vms/{vm_id}/resume", response_model=VmStatus, summary="Unfreeze vCPUs")
    async def resume_vm(vm_id: str) -> VmStatus:
        return await runtime.resume_vm(vm_id)

    @r.delete("/v1/vms/{vm_id}", status_code=204, summary="Kill and remove everything")
    async def delete_vm(vm_id: str) -> Response:
        await runtime.delete_vm(vm_id)
        return Response(status_code=204)

    @r.get("/v1/vms/{vm_id}/console", response_class=PlainTextResponse, summary="Console tail")
    async def console(vm_id: str, tail: int = Query(100, ge=1, le=100_000)) -> str:
        return runtime.console(vm_id, tail)

    return r
