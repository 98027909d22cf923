"""The manager's FastAPI application factory: middleware, error handlers, routers, lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus import __version__
from nexus.core.db import Database
from nexus.core.errors import (
    PROBLEM_CONTENT_TYPE,
    InternalError,
    Problem,
    ValidationFailed,
    problem_for_status,
)
from nexus.core.ids import new_id
from nexus.core.logging import configure_logging, get_logger
from nexus.core.settings import Settings
from nexus.manager import embedded, migrate
from nexus.manager.features.audit import service as audit
from nexus.manager.features.audit.routes import router as audit_router
from nexus.manager.features.auth.routes import router as auth_router
from nexus.manager.features.health.routes import router as health_router
from nexus.manager.features.hosts.routes import router as hosts_router
from nexus.manager.features.images.routes import router as images_router
from nexus.manager.features.networks import service as networks
from nexus.manager.features.networks.routes import router as networks_router
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.routes import router as operations_router
from nexus.manager.features.portforwards.routes import router as port_forwards_router
from nexus.manager.features.system.service import get_or_create_value
from nexus.manager.features.users import service as users
from nexus.manager.features.users.routes import router as users_router
from nexus.manager.features.vms.routes import router as vms_router
from nexus.manager.features.volumes.routes import router as volumes_router
from nexus.manager.features.volumes.routes import vm_router as vm_volumes_router
from nexus.manager.loops import reconciler
from nexus.manager.middleware import RequestContextMiddleware
from nexus.manager.ratelimit import RateLimiter
from nexus.manager.state import ManagerState

log = get_logger(__name__)

# Hooks other features register: (name, coroutine factory) run for the app's lifetime.
StartupHook = Callable[[ManagerState], Awaitable[None]]
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    """Render a :class:`Problem` as ``application/problem+json``."""
    rid = getattr(request.state, "request_id", None) or request.scope.get("state", {}).get(
        "request_id"
    )
    return JSONResponse(
        problem.body(instance=request.url.path, request_id=rid),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


async def _audit_denied(request: Request, problem: Problem) -> None:
    state: ManagerState = request.app.state.nexus
    info = problem.audit
    if info is None:
        if problem.status != 401 or request.method not in MUTATING:
            return
        info = {
            "action": f"{request.method.lower()} {request.url.path}",
            "resource_type": "api",
            "resource_id": None,
        }
    await audit.record_separately(
        state.db,
        actor=getattr(request.state, "principal", None),
        outcome="denied",
        detail=problem.detail,
        **info,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error path answers problem+json; no stack trace ever reaches a client."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        if exc.status in (401, 403) or exc.audit is not None:
            await _audit_denied(request, exc)
        return problem_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        problem = problem_for_status(exc.status_code, detail)
        problem.headers = dict(exc.headers or {})
        return problem_response(request, problem)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()))
            errors.append({"loc": loc, "msg": e.get("msg"), "type": e.get("type")})
        first = errors[0] if errors else {"loc": "", "msg": "invalid request"}
        detail = f"{first['loc']}: {first['msg']}" if first["loc"] else str(first["msg"])
        return problem_response(request, ValidationFailed(detail, extra={"errors": errors}))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return problem_response(request, InternalError("an internal error occurred; see logs"))


async def prepare_database(settings: Settings, db: Database) -> None:
    """Create the state dir and bring the schema to head."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    await migrate.upgrade(db.url)


async def bootstrap(state: ManagerState) -> None:
    """Signing key, first admin, interrupted operations."""
    s = state.settings
    state.jwt_key = s.secret_key or await get_or_create_value(state.db, "jwt_signing_key")
    async with state.db.session() as session:
        generated = await users.ensure_bootstrap_admin(
            db_session=session, password=s.bootstrap_admin_password
        )
    if generated:
        msg = (
            "\n=== Nexus: created user 'admin' with password: "
            f"{generated} (shown once; change it) ===\n"
        )
        sys.stderr.write(msg)
        pw_file = s.state_dir / "initial-admin-password"
        pw_file.write_text(generated + "\n")
        os.chmod(pw_file, 0o600)
    failed = await operations.fail_interrupted(state.db)
    if failed:
        log.warning("operations.interrupted", count=failed)


def create_app(settings: Settings, *, hooks: list[StartupHook] | None = None) -> FastAPI:
    """Build the manager app for ``settings``."""
    configure_logging(settings.log_level, settings.log_json)
    db = Database(settings.resolved_database_url())
    state = ManagerState(settings=settings, db=db, replica_id=new_id("rep"))
    state.limiter = RateLimiter(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prepare_database(settings, db)
        await bootstrap(state)
        for hook in [*(hooks or []), *app.state.startup_hooks]:
            await hook(state)
        # Everything allocated so far lives as long as the process: keep it out of the
        # cyclic GC's full collections (they otherwise stall requests for ~100 ms).
        gc.collect()
        gc.freeze()
        # Database drivers run in threads (aiosqlite): hand the GIL over sooner than the
        # default 5 ms so a query is not stuck behind a busy event loop.
        sys.setswitchinterval(0.0005)
        log.info("manager.started", version=__version__, database=db.engine.url.render_as_string())
        try:
            yield
        finally:
            for task in list(state.tasks):
                task.cancel()
            if state.tasks:
                await asyncio.gather(*state.tasks, return_exceptions=True)
            await db.dispose()

    app = FastAPI(
        title="Nexus",
        version=__version__,
        description="Nexus microVM platform API. Authenticate with `Authorization: Bearer "
        "<token>` (an access token from /v1/auth/login or an `nxs_` API token).",
        lifespan=lifespan,
    )
    app.state.nexus = state
    app.state.startup_hooks = [networks.ensure_default, embedded.start, reconciler.start]
    install_error_handlers(app)
    # Routers are matched in this order on every request: the busiest first (VMs, the
    # operations clients poll, agents' heartbeats); no two routers share a path prefix.
    for router in (
        vms_router,
        operations_router,
        hosts_router,
        health_router,
        auth_router,
        users_router,
        audit_router,
        images_router,
        networks_router,
        port_forwards_router,
        volumes_router,
        vm_volumes_router,
    ):
        app.include_router(router)
    _include_optional_features(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _include_optional_features(app: FastAPI) -> None:
    """Features that contribute routers and start-up hooks via ``register(app)``."""
    from nexus.manager.features import registry

    for register in registry.REGISTRARS:
        register(app)


def api_info() -> dict[str, Any]:
    """Static facts about this build."""
    return {"version": __version__}
