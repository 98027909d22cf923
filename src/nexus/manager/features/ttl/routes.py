"""``POST /v1/vms/{id}/extend``: a VM's TTL."""

from __future__ import annotations

from fastapi import APIRouter

from nexus.manager.features.ttl import service
from nexus.manager.features.ttl.schemas import VmExtend
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.features.vms.schemas import VmRead
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/vms", tags=["vms"])


@router.post(
    "/{vm_id}/extend",
    response_model=VmRead,
    responses={
        403: problem("not your VM to change"),
        404: problem("no such VM"),
        409: problem("the VM is being deleted"),
        422: problem(
            "not exactly one of ttl_s/by_s/expires_at/clear, a past time, or beyond max_ttl_s"
        ),
    },
)
async def extend_vm(
    vm_id: str, body: VmExtend, db: DbSession, state: State, principal: CurrentPrincipal
) -> VmRead:
    """Move a VM's expiry (`ttl_s` from now, `by_s` more, or `expires_at`), or remove it
    (`clear: true`). The owner is warned again before the new expiry."""
    vm = await service.extend(
        db_session=db, state=state, principal=principal, vm_id=vm_id, body=body
    )
    return VmRead.model_validate(vm)
