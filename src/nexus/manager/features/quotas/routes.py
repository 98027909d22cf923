"""/v1/quotas: per-user limits and usage."""

from __future__ import annotations

from fastapi import APIRouter, Path

from nexus.manager.features.quotas import service
from nexus.manager.features.quotas.schemas import QuotaRead, QuotaUpdate
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])
USER_DOC = "user id or username (`me`: yourself)"
#: The ``responses=`` entry of a route whose request a quota may refuse.
QUOTA_EXCEEDED = problem(
    "over the owner's quota: type `quota-exceeded`, with `quota` (the limit's name), "
    "`limit`, `usage` and `requested` (see /v1/quotas/me)"
)


@router.get("/me", response_model=QuotaRead, operation_id="quotas_me")
async def my_quota(db: DbSession, state: State, principal: CurrentPrincipal) -> QuotaRead:
    """Your limits (role defaults + overrides; -1 = unlimited) and what you use now."""
    return await service.get_quota(
        db_session=db, settings=state.settings, principal=principal, user="me"
    )


@router.get(
    "/{user}",
    response_model=QuotaRead,
    responses={404: problem("no such user, or not yours to see (non-admins: only `me`)")},
)
async def get_quota(
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    user: str = Path(max_length=64, description=USER_DOC),
) -> QuotaRead:
    """A user's limits and usage (admin; others only their own)."""
    return await service.get_quota(
        db_session=db, settings=state.settings, principal=principal, user=user
    )


@router.put(
    "/{user}",
    response_model=QuotaRead,
    responses={
        403: problem("only an admin sets quotas"),
        404: problem("no such user"),
        422: problem("an unknown limit name or a value under -1"),
    },
)
async def set_quota(
    body: QuotaUpdate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    user: str = Path(max_length=64, description=USER_DOC),
) -> QuotaRead:
    """Set a user's overrides (admin), replacing earlier ones: a limit left out follows the
    role default (setting `quota_defaults`), -1 is unlimited. Over-limit requests are then
    refused with 403 `quota-exceeded`, naming the limit, the usage and the request."""
    return await service.set_quota(
        db_session=db, settings=state.settings, principal=principal, user=user, body=body
    )
