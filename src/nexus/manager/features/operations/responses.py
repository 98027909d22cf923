"""HTTP answers for endpoints that start an operation: ``202`` + the operation, or with
``?wait=true`` the finished result (the resource) once the operation succeeded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Problem
from nexus.manager.features.operations import service
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.operations.schemas import OperationRead
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal

WAIT_DOC = "block until the operation ends (up to `timeout` s) and return the result"
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": OperationRead, "description": "accepted: the operation to poll"}
}
Fetch = Callable[[AsyncSession], Awaitable[BaseModel]]


class OperationFailed(Problem):
    """A waited-for operation ended in failure (``operation_id`` names it)."""

    status, slug, title = 409, "operation-failed", "Operation failed"


def _op_json(op: Operation, status: int) -> JSONResponse:
    return JSONResponse(
        OperationRead.model_validate(op).model_dump(mode="json"),
        status_code=status,
        headers={"Location": f"/v1/operations/{op.id}"},
    )


async def wait_result(
    state: ManagerState, principal: Principal, op: Operation, timeout_s: float
) -> Operation:
    """Wait for ``op``; raise :class:`OperationFailed` if it failed or was cancelled."""
    done = await service.wait(state=state, principal=principal, op_id=op.id, timeout_s=timeout_s)
    if done.status in ("failed", "cancelled"):
        raise OperationFailed(
            done.error or f"operation {done.status}", extra={"operation_id": done.id}
        )
    return done


async def respond(
    state: ManagerState,
    principal: Principal,
    op: Operation,
    *,
    wait: bool,
    timeout: float,
    fetch: Fetch | None = None,
) -> JSONResponse:
    """202 + operation; or (``wait``) the result of ``fetch`` once it succeeded (the finished
    operation when ``fetch`` is None), still 202 if it is running when ``timeout`` passes."""
    if not wait:
        return _op_json(op, 202)
    done = await wait_result(state, principal, op, timeout)
    if done.status != "succeeded":
        return _op_json(done, 202)
    if fetch is None:
        return _op_json(done, 200)
    async with state.db.session() as s:
        model = await fetch(s)
    return JSONResponse(model.model_dump(mode="json"), 200)
