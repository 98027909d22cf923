"""/v1/hosts: hosts, join tokens, agent registration and heartbeats."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import FileResponse

from nexus.agent.schemas import Heartbeat, RegisterRequest, RegisterResponse
from nexus.core.errors import Unauthorized
from nexus.manager.deps import AuthLimit, CurrentPrincipal, DbSession, State, bearer_token
from nexus.manager.features.hosts import service
from nexus.manager.features.hosts.schemas import (
    HostMetrics,
    HostRead,
    JoinTokenCreate,
    JoinTokenCreated,
)

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])

SHA256_HEADER = "X-Content-SHA256"
"""Response header with the hex SHA-256 of the whole file (also on 206 partial responses)."""


async def _host_bearer(request: Request) -> str:
    """The host credential; checked before the body is even parsed (async: no thread hop)."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing host credential (Authorization: Bearer <host token>)")
    return token


@router.post("/join-tokens", response_model=JoinTokenCreated, status_code=status.HTTP_201_CREATED)
async def create_join_token(
    db: DbSession, principal: CurrentPrincipal, body: JoinTokenCreate | None = None
) -> JoinTokenCreated:
    """Mint a single-use join token for ``nexus-agent --join-token`` (admin)."""
    return await service.create_join_token(
        db_session=db, principal=principal, expires_in_s=(body or JoinTokenCreate()).expires_in_s
    )


@router.post("/register", response_model=RegisterResponse, dependencies=[AuthLimit])
async def register(body: RegisterRequest, db: DbSession) -> RegisterResponse:
    """Agent registration: authenticated by the join token in the body."""
    return await service.register(db_session=db, body=body)


@router.post(
    "/{host_id}/heartbeat",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(_host_bearer)],
)
async def heartbeat(host_id: str, body: Heartbeat, request: Request, db: DbSession) -> None:
    """Agent heartbeat: authenticated by the host's own credential (Bearer)."""
    await service.heartbeat(db_session=db, host_id=host_id, bearer=bearer_token(request), body=body)


@router.get(
    "/{host_id}/images/{image_id}/files/{name}",
    dependencies=[Depends(_host_bearer)],
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file"},
        206: {"description": "The requested byte range (``Range: bytes=N-``)"},
        401: {"description": "Not this host's own host token"},
        404: {"description": "No such image, or the image has no such file"},
    },
)
async def image_file(
    host_id: str, image_id: str, name: str, request: Request, db: DbSession, state: State
) -> FileResponse:
    """Download one file of an image (``vmlinuz``, ``vmlinux``, ``initrd.img``,
    ``rootfs.ext4``, ``manifest.json``) to an agent's image cache. Authenticated by the
    host's own credential (Bearer host token), not by user tokens. Supports ``Range``
    (resumable); ``X-Content-SHA256`` carries the whole file's SHA-256."""
    path, sha = await service.image_file(
        db_session=db,
        state=state,
        host_id=host_id,
        bearer=bearer_token(request),
        image_id=image_id,
        name=name,
    )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={SHA256_HEADER: sha, "Cache-Control": "no-store"},
    )


@router.get("", response_model=list[HostRead])
async def list_hosts(db: DbSession, state: State, principal: CurrentPrincipal) -> list[HostRead]:
    """Hosts with health, capacity and allocation."""
    alloc = await service.allocations(db)
    t = state.settings.host_heartbeat_timeout_s
    return [
        service.to_read(h, t, alloc.get(h.id))
        for h in await service.list_hosts(db_session=db, principal=principal)
    ]


@router.get("/{host_id}", response_model=HostRead)
async def get_host(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> HostRead:
    """One host."""
    host = await service.get_host(db_session=db, principal=principal, host_id=host_id)
    alloc = await service.allocations(db)
    return service.to_read(host, state.settings.host_heartbeat_timeout_s, alloc.get(host.id))


@router.get("/{host_id}/metrics", response_model=HostMetrics)
async def host_metrics(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> HostMetrics:
    """A host's latest live facts (load, available memory, disk, uptime, VMM resident
    memory; sent with its heartbeats, ``sampled_at`` = the last one), its VMs by state, what
    is allocated to them and the vCPU overcommit limit. Any authenticated user may read it."""
    return await service.host_metrics(
        db_session=db,
        principal=principal,
        host_id=host_id,
        timeout_s=state.settings.host_heartbeat_timeout_s,
    )


@router.post("/{host_id}/drain", response_model=HostRead)
async def drain(host_id: str, db: DbSession, state: State, principal: CurrentPrincipal) -> HostRead:
    """Stop placing new VMs on this host (admin)."""
    host = await service.set_drained(
        db_session=db, principal=principal, host_id=host_id, drained=True
    )
    return service.to_read(host, state.settings.host_heartbeat_timeout_s, None)


@router.post("/{host_id}/undrain", response_model=HostRead)
async def undrain(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> HostRead:
    """Place VMs on this host again (admin)."""
    host = await service.set_drained(
        db_session=db, principal=principal, host_id=host_id, drained=False
    )
    return service.to_read(host, state.settings.host_heartbeat_timeout_s, None)


@router.delete("/{host_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_host(host_id: str, db: DbSession, principal: CurrentPrincipal) -> None:
    """Forget a host (admin); refused while it has VMs."""
    await service.delete_host(db_session=db, principal=principal, host_id=host_id)
