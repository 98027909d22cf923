"""/v1/hosts: hosts, join tokens, agent registration and heartbeats."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status

from nexus.agent.schemas import Heartbeat, RegisterRequest, RegisterResponse
from nexus.core.errors import Unauthorized
from nexus.manager.deps import AuthLimit, CurrentPrincipal, DbSession, State, bearer_token
from nexus.manager.features.hosts import service
from nexus.manager.features.hosts.schemas import HostRead, JoinTokenCreate, JoinTokenCreated

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


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
