"""Health endpoints (unauthenticated): liveness, readiness, start-up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from nexus.manager import migrate
from nexus.manager.platform.deps import State

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    """The database answers (and, once hosts exist, at least one host is healthy)."""
    checks: dict[str, Any] = {}
    ok = True
    try:
        async with state.db.session() as s:
            await s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        ok = False
    for name, check in state.extras.get("ready_checks", {}).items():
        try:
            good, detail = await check(state)
        except Exception as exc:  # a failing check is "not ready", never a 500
            good, detail = False, f"error: {type(exc).__name__}"
        checks[name] = detail
        ok = ok and good
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/startup")
async def startup(state: State) -> JSONResponse:
    """Migrations are at head."""
    try:
        at_head = await migrate.is_at_head(state.db)
    except Exception:
        at_head = False
    return JSONResponse(
        {"status": "ok" if at_head else "migrating", "migrations_at_head": at_head},
        status_code=200 if at_head else 503,
    )
