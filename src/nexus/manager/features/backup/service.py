"""Backups through the API: admin only, one at a time, run as an operation, audited."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Conflict, Problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.backup import archive
from nexus.manager.features.backup.schemas import BackupCreate
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, ensure_role

KIND = "backup.create"


class BackupFailed(Problem):
    """The backup could not be written (disk full, pg_dump failed...)."""

    status, slug, title = 500, "backup-failed", "Backup failed"


async def start_backup(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: BackupCreate
) -> Operation:
    """Start a backup operation (admin only; 409 while another backup runs)."""
    ensure_role(principal, KIND, "backup", "admin")
    busy = await db_session.execute(
        select(Operation.id).where(
            Operation.kind == KIND, Operation.status.in_(("pending", "running"))
        )
    )
    running = busy.scalar()
    if running is not None:
        raise Conflict(f"backup {running} is still running; wait for it")
    settings = state.settings
    keep = body.keep or settings.backup_keep
    target = settings.resolved_backup_dir()
    op = operations.create(db_session, principal=principal, kind=KIND, resource_type="backup")
    audit.record(
        db_session,
        actor=principal,
        action=KIND,
        resource_type="backup",
        resource_id=op.id,
        after={"with_disks": body.with_disks, "keep": keep, "directory": str(target)},
    )
    await db_session.commit()

    async def work(progress: operations.Progress) -> dict[str, Any]:
        await progress(5, f"writing the archive into {target}")
        try:
            result = await asyncio.to_thread(
                archive.create_backup, settings, target, keep=keep, with_disks=body.with_disks
            )
        except archive.BackupError as exc:
            metrics.BACKUPS.labels("failed").inc()
            raise BackupFailed(str(exc)) from exc
        metrics.BACKUPS.labels("succeeded").inc()
        metrics.LAST_BACKUP.set(time.time())
        return result.as_dict()

    operations.start(state, op.id, work, kind=KIND)
    return op
