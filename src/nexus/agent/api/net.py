"""The agent's routes for networks, port forwards and volumes.

PUT    /v1/networks/{id}              body NetworkBody -> {present}   re-apply rules if here
DELETE /v1/networks/{id}              -> 204 (409 while taps are attached)
GET    /v1/port-forwards?vm_id=       -> [PortForwardBody]
POST   /v1/port-forwards              body PortForwardBody -> PortForwardBody (409 taken or a
                                      host listener; 422 outside agent_port_forward_range)
DELETE /v1/port-forwards/{proto}/{host_port}?vm_id=  -> 204
PUT    /v1/volumes/{id}               body VolumeBody -> VolumeInfo  (create or grow)
GET    /v1/volumes/{id}               -> VolumeInfo (404)
DELETE /v1/volumes/{id}               -> 204 (409 while a running VM uses it)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Response

from nexus.agent.net import (
    NetError,
    NetworkInUseError,
    PortForwardConflictError,
    PortForwardRefusedError,
)
from nexus.agent.runtime import AgentRuntime, RuntimeProblem, VmConflict, VmInvalid, VmNotFound
from nexus.agent.storage.volumes import VolumeError, delete_volume, ensure_volume, volume_path
from nexus.hostapi.models import NetworkBody, NetworkRef, PortForwardBody, VolumeBody, VolumeInfo


class NetProblem(RuntimeProblem):
    """The host network refused a change."""

    status = 502
    type = "host-network-error"


def router(runtime: AgentRuntime) -> APIRouter:
    """The network, port forward and volume routes over ``runtime`` (auth comes from the app)."""
    r = APIRouter()
    wire = runtime.netwire
    state_dir = runtime.settings.state_dir

    def path_of(volume_id: str) -> Path:
        try:
            return volume_path(state_dir, volume_id)
        except VolumeError as exc:
            raise VmInvalid(str(exc)) from exc

    @r.put("/v1/networks/{network_id}", summary="Re-apply a network's rules if present here")
    async def put_network(network_id: str, body: NetworkBody) -> dict[str, bool]:
        try:
            present = await wire.update_network(NetworkRef(id=network_id, **body.model_dump()))
        except (NetError, ValueError) as exc:
            raise NetProblem(str(exc)) from exc
        return {"present": present}

    @r.delete("/v1/networks/{network_id}", status_code=204, summary="Remove a network here")
    async def delete_network(network_id: str) -> Response:
        try:
            await wire.delete_network(network_id)
        except NetworkInUseError as exc:
            raise VmConflict(str(exc)) from exc
        except NetError as exc:
            raise NetProblem(str(exc)) from exc
        return Response(status_code=204)

    @r.get("/v1/port-forwards", response_model=list[PortForwardBody], summary="Forwards")
    async def list_port_forwards(vm_id: str | None = Query(None)) -> list[PortForwardBody]:
        pfs = await wire.host.list_port_forwards(vm_id)
        return [
            PortForwardBody(
                vm_id=p.vm_id,
                host_port=p.host_port,
                guest_ip=p.guest_ip,
                guest_port=p.guest_port,
                protocol=p.protocol,
            )
            for p in pfs
        ]

    @r.post("/v1/port-forwards", response_model=PortForwardBody, summary="Publish a port")
    async def add_port_forward(body: PortForwardBody) -> PortForwardBody:
        try:
            await wire.host.add_port_forward(
                body.vm_id, body.host_port, body.guest_ip, body.guest_port, body.protocol
            )
        except PortForwardConflictError as exc:
            raise VmConflict(str(exc)) from exc
        except (PortForwardRefusedError, ValueError) as exc:
            raise VmInvalid(str(exc)) from exc
        except NetError as exc:
            raise NetProblem(str(exc)) from exc
        return body

    @r.delete(
        "/v1/port-forwards/{protocol}/{host_port}", status_code=204, summary="Unpublish a port"
    )
    async def remove_port_forward(
        protocol: Literal["tcp", "udp"], host_port: int, vm_id: str = Query(...)
    ) -> Response:
        try:
            await wire.remove_port_forward(vm_id, host_port, protocol)
        except NetError as exc:
            raise NetProblem(str(exc)) from exc
        return Response(status_code=204)

    @r.put("/v1/volumes/{volume_id}", response_model=VolumeInfo, summary="Create/grow a volume")
    async def put_volume(volume_id: str, body: VolumeBody) -> VolumeInfo:
        path = path_of(volume_id)
        try:
            size = await asyncio.to_thread(ensure_volume, path, body.size_mib, body.filesystem)
        except VolumeError as exc:
            raise VmInvalid(str(exc)) from exc
        return VolumeInfo(id=volume_id, path=str(path), size_mib=size)

    @r.get("/v1/volumes/{volume_id}", response_model=VolumeInfo, summary="A volume file")
    async def get_volume(volume_id: str) -> VolumeInfo:
        path = path_of(volume_id)
        if not path.is_file():
            raise VmNotFound(f"no volume {volume_id!r} on this host")
        return VolumeInfo(id=volume_id, path=str(path), size_mib=path.stat().st_size // 2**20)

    @r.delete("/v1/volumes/{volume_id}", status_code=204, summary="Delete a volume file")
    async def delete_volume_route(volume_id: str) -> Response:
        path = path_of(volume_id)
        for vm in runtime.vms.values():
            used = any(v.id == volume_id for v in vm.spec.volumes)
            if used and vm.state in ("starting", "running", "paused", "stopping"):
                raise VmConflict(f"volume {volume_id} is in use by running VM {vm.spec.id}")
        await asyncio.to_thread(delete_volume, path)
        return Response(status_code=204)

    return r
