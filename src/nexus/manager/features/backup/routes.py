"""/v1/admin/backup: back up the manager's state (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from nexus.manager.features.backup import service
from nexus.manager.features.backup.schemas import BackupCreate
from nexus.manager.features.operations.responses import ACCEPTED, WAIT_DOC, respond
from nexus.manager.features.operations.schemas import OperationRead
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/backup",
    response_model=OperationRead,
    responses={
        **ACCEPTED,
        200: {"model": OperationRead, "description": "with ?wait=true: the finished operation"},
        409: {"description": "another backup is running, or (with ?wait=true) this one failed"},
    },
)
async def backup(
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    body: BackupCreate | None = None,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(600, gt=0, le=3600),
) -> JSONResponse:
    """Back up the database (SQLite online backup API, or pg_dump), the JWT and sealing key
    files and the image catalogue — and with `with_disks` VM disks, volumes and snapshots —
    into one archive with a SHA-256 manifest, in the `backup_dir` setting. Admin only (403
    otherwise, audited); one backup at a time (409). Returns 202 + the operation, whose
    `result` names the archive (`path`, `size_bytes`, `sha256`, `pruned`). Restore with
    `nexus-manager restore --from FILE` (see docs/operations/backup.md)."""
    op = await service.start_backup(
        db_session=db, state=state, principal=principal, body=body or BackupCreate()
    )
    return await respond(state, principal, op, wait=wait, timeout=timeout)
