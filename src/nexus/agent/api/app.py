"""The agent HTTP API (manager -> agent), see docs/dev/contracts.md: the app factory, its
bearer auth and its problem responses; the routes are the routers of this package.

Every route needs ``Authorization: Bearer <agent_token>``; errors are
``application/problem+json`` (RFC 9457) with a stable ``type``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus.agent import observability
from nexus.agent.api import guest, net, snapshots, vms
from nexus.agent.api.problems import problem
from nexus.agent.runtime import AgentRuntime, RuntimeProblem
from nexus.agent.vmm.base import VmmError
from nexus.core.tracing import FASTAPI_TELEMETRY, TracingMiddleware

log = logging.getLogger(__name__)


class _Unauthorized(Exception):
    pass


def create_app(runtime: AgentRuntime, token: str | Callable[[], str]) -> FastAPI:
    """Build the agent API around ``runtime``; ``token`` (or a callable returning it) is the
    bearer secret the manager must present on every route but ``/health/*`` and ``/metrics``
    (:mod:`nexus.agent.observability`: the scrape token or allowlist). The caller owns
    ``runtime.startup/shutdown``."""
    get_token: Callable[[], str] = token if callable(token) else (lambda: token)

    async def auth(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = get_token()
        if (
            scheme.lower() != "bearer"
            or not expected
            or not hmac.compare_digest(presented.strip().encode(), expected.encode())
        ):
            raise _Unauthorized()

    app = FastAPI(
        title="Nexus agent API",
        version="1",
        description="Manager-to-agent API: VM lifecycle on one host.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.state.runtime = runtime

    @app.exception_handler(_Unauthorized)
    async def _unauth(request: Request, exc: _Unauthorized) -> JSONResponse:
        return problem(
            401, "unauthorized", "Unauthorized", "a valid agent bearer token is required", request
        )

    @app.exception_handler(RuntimeProblem)
    async def _runtime(request: Request, exc: RuntimeProblem) -> JSONResponse:
        return problem(exc.status, exc.type, type(exc).__name__, str(exc), request)

    @app.exception_handler(VmmError)
    async def _vmm(request: Request, exc: VmmError) -> JSONResponse:
        return problem(502, "vmm-error", "VMM error", str(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return problem(422, "validation-error", "Invalid request", detail, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, "http-error", "HTTP error", str(exc.detail), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled agent error")
        return problem(500, "internal-error", "Internal error", "unexpected agent error", request)

    # one router per concern, each ``router(runtime)`` (guest: + the token, for WebSockets)
    authed = [Depends(auth)]
    app.include_router(observability.router(runtime))
    app.include_router(vms.router(runtime), dependencies=authed)
    app.include_router(snapshots.router(runtime), dependencies=authed)
    app.include_router(guest.router(runtime, get_token), dependencies=authed)
    app.include_router(net.router(runtime), dependencies=authed)

    app.add_middleware(TracingMiddleware, component="agent")
    app.add_middleware(observability.HttpMetrics)
    return app
