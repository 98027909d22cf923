"""/v1/networks: guest networks."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.networks import service
from nexus.manager.features.networks.schemas import (
    NetworkCreate,
    NetworkPage,
    NetworkRead,
    NetworkUpdate,
)
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/networks", tags=["networks"])


@router.post(
    "",
    response_model=NetworkRead,
    status_code=201,
    dependencies=[CreateLimit],
    responses={
        403: {
            "description": "Viewers may not create networks; or over the `networks` quota "
            "(type `quota-exceeded`)",
            "content": {"application/problem+json": {}},
        },
        409: {
            "description": "The CIDR overlaps another network (only your own are named) or "
            "an address or route of a Nexus host; or the pool has no free range left; or "
            "you already have a network of that name"
        },
    },
)
async def create_network(
    body: NetworkCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> NetworkRead:
    """Create a private IPv4 network. Each host that runs one of its VMs gets a bridge with
    the CIDR's first address (the guests' gateway); guests get static addresses from the
    manager (never reused while taken). Without `cidr` a free range of the admin's
    `network_pool` is allocated. `nat`: masquerade outbound traffic; `isolated`: guests
    reach only their own network and the host. Networks never overlap each other nor the
    hosts' own subnets (409)."""
    net = await service.create_network(
        db_session=db, settings=state.settings, principal=principal, body=body
    )
    return NetworkRead.model_validate(net)


@router.get("", response_model=NetworkPage)
async def list_networks(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> NetworkPage:
    """Networks you may see: your own (including your `default` network, made when your
    first VM without networks is created) and shared ones (admin: all)."""
    nets, nxt = page_of(
        await service.list_networks(db_session=db, principal=principal), cursor, limit
    )
    return NetworkPage(items=[NetworkRead.model_validate(n) for n in nets], next_cursor=nxt)


@router.get("/{network_id}", response_model=NetworkRead)
async def get_network(network_id: str, db: DbSession, principal: CurrentPrincipal) -> NetworkRead:
    """One network."""
    return NetworkRead.model_validate(
        await service.get_network(db_session=db, principal=principal, network_id=network_id)
    )


@router.patch("/{network_id}", response_model=NetworkRead)
async def update_network(
    network_id: str, body: NetworkUpdate, db: DbSession, state: State, principal: CurrentPrincipal
) -> NetworkRead:
    """Rename or describe; changing `nat`/`isolated` re-applies the rules on every host."""
    net = await service.update_network(
        db_session=db, state=state, principal=principal, network_id=network_id, body=body
    )
    return NetworkRead.model_validate(net)


@router.delete("/{network_id}", status_code=204)
async def delete_network(
    network_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete a network; refused (409) while VMs are attached and for `default`."""
    await service.delete_network(
        db_session=db, state=state, principal=principal, network_id=network_id
    )
    return Response(status_code=204)
