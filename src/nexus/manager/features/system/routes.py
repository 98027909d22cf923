"""/v1/system: the platform's own state (background loops' leaders)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC
from nexus.manager.features.system import service
from nexus.manager.features.system.schemas import LeaderList
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/system", tags=["system"])


@router.get(
    "/leaders",
    response_model=LeaderList,
    responses={
        401: {"description": "Not authenticated"},
        403: {"description": "Not an admin"},
    },
)
async def list_leaders(
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    response: Response,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(
        None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC + " (one page holds every loop)"
    ),
) -> LeaderList:
    """Which manager replica runs each background loop (reconciler, metrics sampler,
    policies, webhooks, retention ...): the loop's lease holder, when the lease expires,
    whether it is live and whether the answering replica holds it (admin). A loop whose
    leader died shows ``live: false`` until another replica takes it over (within
    ``lease_ttl_s`` plus a third). The ``X-Nexus-Replica`` header names the answering
    replica."""
    response.headers["X-Nexus-Replica"] = state.replica_id
    return await service.list_leaders(db_session=db, state=state, principal=principal, limit=limit)
