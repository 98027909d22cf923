"""/v1/hosts: hosts, join tokens, agent registration and heartbeats."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import FileResponse

from nexus.core.errors import Unauthorized
from nexus.core.paging import CURSOR_DOC, KEY_CURSOR_MAX_LEN, LIMIT_DOC, cursor_key, key_cursor
from nexus.hostapi.models import Heartbeat, RegisterRequest, RegisterResponse
from nexus.manager.features.hosts import service
from nexus.manager.features.hosts.schemas import (
    HostMetrics,
    HostPage,
    HostRead,
    HostStatus,
    HostSummary,
    JoinTokenCreate,
    JoinTokenCreated,
)
from nexus.manager.platform.deps import AuthLimit, CurrentPrincipal, DbSession, State, bearer_token

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


@router.post(
    "/register",
    response_model=RegisterResponse,
    dependencies=[AuthLimit],
    responses={
        401: {"description": "Invalid, used or expired join token"},
        403: {"description": "Re-registering a host with neither its host token nor an admin's"},
        409: {"description": "A host of this name exists: present its host token to replace it"},
        422: {"description": "agent_url not http(s), or link-local/loopback/multicast/unspecified"},
    },
)
async def register(
    body: RegisterRequest, request: Request, db: DbSession, state: State
) -> RegisterResponse:
    """Agent registration: authenticated by the join token in the body. Re-registering an
    existing host (same name) also needs ``Authorization: Bearer`` with that host's current
    host token or an admin's token."""
    return await service.register(
        db_session=db, state=state, body=body, bearer=bearer_token(request)
    )


@router.post(
    "/{host_id}/heartbeat",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(_host_bearer)],
)
async def heartbeat(
    host_id: str, body: Heartbeat, request: Request, db: DbSession, state: State
) -> None:
    """Agent heartbeat: authenticated by the host's own credential (Bearer). Live facts
    (load, memory, uptime) are stored within a second, in a batch; state changes at once."""
    await service.heartbeat(
        db_session=db, host_id=host_id, bearer=bearer_token(request), body=body, state=state
    )


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


@router.get("", response_model=HostPage, responses={422: {"description": "Bad cursor or filter"}})
async def list_hosts(
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=KEY_CURSOR_MAX_LEN, description=CURSOR_DOC),
    status: HostStatus | None = Query(
        None, description="only hosts in this state (healthy, unhealthy, draining)"
    ),
    name: str | None = Query(
        None, max_length=128, description="only hosts whose name contains this text"
    ),
    driver: str | None = Query(
        None, max_length=32, description="only hosts with this VMM driver (qemu, firecracker)"
    ),
) -> HostPage:
    """Hosts by name, with health and capacity, paged (``limit``, ``cursor``) and filtered
    in the database: cheap at a thousand hosts. Admins also see the agent URL and the
    allocation (non-admins get the narrower ``HostSummary``)."""
    views, last = await service.list_host_views(
        db_session=db,
        principal=principal,
        timeout_s=state.settings.host_heartbeat_timeout_s,
        limit=limit,
        after=cursor_key(cursor),
        status=status,
        name=name,
        driver=driver,
    )
    return HostPage(items=views, next_cursor=key_cursor(last) if last is not None else None)


@router.get("/{host_id}", response_model=HostRead | HostSummary)
async def get_host(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> HostRead | HostSummary:
    """One host (``HostRead`` for admins, ``HostSummary`` for everyone else)."""
    return await service.get_host_view(
        db_session=db,
        principal=principal,
        host_id=host_id,
        timeout_s=state.settings.host_heartbeat_timeout_s,
    )


@router.get("/{host_id}/metrics", response_model=HostMetrics)
async def host_metrics(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> HostMetrics:
    """A host's latest live facts (load, available memory, disk, uptime, VMM resident
    memory; sent with its heartbeats, ``sampled_at`` = the last one), its VMs by state, what
    is allocated to them and the vCPU overcommit limit. Any authenticated user may read it
    (a non-admin's VM counts and allocation are their own VMs only)."""
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
async def delete_host(
    host_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> None:
    """Forget a host (admin); refused while it has VMs."""
    await service.delete_host(db_session=db, principal=principal, host_id=host_id, state=state)
