"""The manager's FastAPI application factory: middleware, error handlers, the features of
:mod:`nexus.manager.features.registry` (routers, start-up hooks), lifespan."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus import __version__
from nexus.core import tracing
from nexus.core.db import Database, check_private_database, make_database_private
from nexus.core.errors import (
    PROBLEM_CONTENT_TYPE,
    InternalError,
    Problem,
    ValidationFailed,
    problem_for_status,
)
from nexus.core.files import ensure_private_dir, write_private
from nexus.core.ids import new_id
from nexus.core.logging import configure_logging, get_logger
from nexus.core.security import configure_password_workers
from nexus.core.settings import Settings
from nexus.core.signing import KeyRing, key_file
from nexus.core.tracing import TracingMiddleware
from nexus.manager import embedded, migrate, openapi, webui
from nexus.manager.features import registry
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth import service as auth_service
from nexus.manager.features.hosts import service as hosts_service
from nexus.manager.features.operations import service as operations
from nexus.manager.features.users import service as users
from nexus.manager.features.users.service import BOOTSTRAP_PASSWORD_FILE
from nexus.manager.loops import policies, reconciler
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.metrics import MetricsMiddleware, instrument_engine
from nexus.manager.platform.middleware import RequestContextMiddleware
from nexus.manager.platform.ratelimit import RateLimiter

log = get_logger(__name__)

StartupHook = registry.StartupHook
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
    actor = getattr(request.state, "principal", None)
    if actor is None and problem.status == 401:
        # anonymous: aggregated per source address, so no one grows the table at will
        denials = state.extras.setdefault("anonymous_denials", audit.AnonymousDenials())
        await denials.record(
            state.db,
            window_s=state.settings.audit_anonymous_window_s,
            now=time.monotonic(),
            actor=None,
            outcome="denied",
            detail=problem.detail,
            **info,
        )
        return
    await audit.record_separately(
        state.db, actor=actor, outcome="denied", detail=problem.detail, **info
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


def signing_keys(settings: Settings) -> KeyRing:
    """The JWT key ring: ``secret_key`` when set, else the 0600 key file in ``state_dir``.
    Raises :class:`SigningKeyError` for a short key or an unreadable/open key file."""
    grace = timedelta(seconds=settings.access_token_ttl_s)
    if settings.secret_key:
        return KeyRing.from_secret(settings.secret_key, grace=grace)
    return KeyRing.from_file(key_file(settings.state_dir), grace=grace)


def preflight(settings: Settings) -> None:
    """Checks that must pass before the manager opens anything: a private state dir, a
    database no other account can read, a signing key that is long enough. Raises
    :class:`InsecureDatabase` or :class:`SigningKeyError` with a one-line fix."""
    ensure_private_dir(settings.state_dir)
    check_private_database(settings.resolved_database_url())
    signing_keys(settings)  # short key, key file open to others: stop here, in one line


async def prepare_database(settings: Settings, db: Database) -> None:
    """Create the state dir (0700), refuse a database others can read, bring the schema to
    head and make the database files 0600 (a new database is created under the process umask;
    SQLite gives -wal/-shm the main file's mode)."""
    ensure_private_dir(settings.state_dir)
    check_private_database(db.url)
    await migrate.upgrade(db.url)
    make_database_private(db.url)


async def bootstrap(state: ManagerState) -> None:
    """Signing keys, first admin, interrupted operations."""
    s = state.settings
    state.keys = signing_keys(s)
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
        # deleted when that admin changes the password (users.service.update_user)
        write_private(s.state_dir / BOOTSTRAP_PASSWORD_FILE, generated + "\n")
    failed = await operations.fail_interrupted(state.db)
    if failed:
        log.warning("operations.interrupted", count=failed)


def create_app(settings: Settings, *, hooks: list[StartupHook] | None = None) -> FastAPI:
    """Build the manager app for ``settings``."""
    configure_logging(settings.log_level, settings.log_json)
    configure_password_workers(settings.password_hash_workers)
    db = Database(settings.resolved_database_url())
    tracing.configure("nexus-manager")
    if settings.metrics_enabled:
        instrument_engine(db.engine)
    state = ManagerState(settings=settings, db=db, replica_id=new_id("rep"))
    state.limiter = RateLimiter(settings)
    state.authenticator = auth_service.authenticate

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one replica at a time migrates, creates the first admin and the default rows
        async with db.exclusive():
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
            await hosts_service.close_agent_pool(state)
            await db.dispose()

    app = FastAPI(
        title="Nexus",
        version=__version__,
        description="Nexus microVM platform API. Authenticate with `Authorization: Bearer "
        "<token>` (an access token from /v1/auth/login or an `nxs_` API token). Errors are "
        "`application/problem+json`; every listing is `{items, next_cursor}` paged with "
        "`limit` and `cursor`.",
        lifespan=lifespan,
        docs_url=None,  # served by nexus.manager.openapi, with bundled assets
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,
        telemetry=tracing.FASTAPI_TELEMETRY,
    )
    app.state.nexus = state
    # the features' hooks (features/registry.py), then the embedded agent and the loops
    app.state.startup_hooks = [
        *registry.startup_hooks(),
        embedded.start,
        reconciler.start,
        policies.start,
    ]
    install_error_handlers(app)
    for router in registry.routers():  # matched in this order on every request
        app.include_router(router)
    openapi.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    # innermost first: the web console at / (non-API GETs only), then the tracing span and the
    # metrics, which see the request id and the route
    app.add_middleware(webui.WebUiMiddleware, ui_dir=settings.resolved_ui_dir())
    app.add_middleware(TracingMiddleware, component="manager")
    if settings.metrics_enabled:
        app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def api_info() -> dict[str, Any]:
    """Static facts about this build."""
    return {"version": __version__}
