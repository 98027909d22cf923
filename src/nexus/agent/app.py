"""The agent HTTP API (manager -> agent), see docs/dev/contracts.md.

Every route needs ``Authorization: Bearer <agent_token>``; errors are
``application/problem+json`` (RFC 9457) with a stable ``type``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus.agent.runtime import AgentRuntime, RuntimeProblem
from nexus.agent.vmm.base import VmmError
from nexus.hostapi.models import HostFacts, VmSpec, VmStatus

log = logging.getLogger(__name__)
PROBLEM_BASE = "https://nexus.dev/problems/"


def problem(status: int, type_: str, title: str, detail: str, request: Request) -> JSONResponse:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(request.url.path),
    }
    rid = request.headers.get("x-request-id")
    if rid:
        body["request_id"] = rid
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


class _Unauthorized(Exception):
    pass


def create_app(runtime: AgentRuntime, token: str | Callable[[], str]) -> FastAPI:
    """Build the agent API around ``runtime``; ``token`` (or a callable returning it) is the
    bearer secret the manager must present. The caller owns ``runtime.startup/shutdown``."""
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
        dependencies=[Depends(auth)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
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

    @app.get("/v1/info", response_model=HostFacts, summary="Host facts and capacity")
    async def info() -> HostFacts:
        return runtime.facts()

    @app.get("/v1/vms", response_model=list[VmStatus], summary="All VMs on this host")
    async def list_vms() -> list[VmStatus]:
        return runtime.list()

    @app.put("/v1/vms/{vm_id}", response_model=VmStatus, summary="Create/update a VM (idempotent)")
    async def put_vm(vm_id: str, spec: VmSpec, request: Request) -> VmStatus | JSONResponse:
        if spec.id != vm_id:
            return problem(
                422,
                "validation-error",
                "Invalid request",
                f"body id {spec.id!r} does not match path {vm_id!r}",
                request,
            )
        return await runtime.put_vm(spec)

    @app.get("/v1/vms/{vm_id}", response_model=VmStatus, summary="One VM's status")
    async def get_vm(vm_id: str) -> VmStatus:
        return runtime.status(vm_id)

    @app.post("/v1/vms/{vm_id}/start", response_model=VmStatus, summary="Start the VMM")
    async def start_vm(vm_id: str) -> VmStatus:
        return await runtime.start_vm(vm_id)

    @app.post("/v1/vms/{vm_id}/stop", response_model=VmStatus, summary="Stop (ACPI, then kill)")
    async def stop_vm(
        vm_id: str,
        force: bool = Query(False, description="kill at once, no ACPI power-off"),
        timeout_s: float | None = Query(None, gt=0, le=600),
    ) -> VmStatus:
        return await runtime.stop_vm(vm_id, force=force, timeout=timeout_s)

    @app.post("/v1/vms/{vm_id}/reboot", response_model=VmStatus, summary="Reboot")
    async def reboot_vm(vm_id: str) -> VmStatus:
        return await runtime.reboot_vm(vm_id)

    @app.post("/v1/vms/{vm_id}/pause", response_model=VmStatus, summary="Freeze vCPUs")
    async def pause_vm(vm_id: str) -> VmStatus:
        return await runtime.pause_vm(vm_id)

    @app.post("/v1/vms/{vm_id}/resume", response_model=VmStatus, summary="Unfreeze vCPUs")
    async def resume_vm(vm_id: str) -> VmStatus:
        return await runtime.resume_vm(vm_id)

    @app.delete("/v1/vms/{vm_id}", status_code=204, summary="Kill and remove everything")
    async def delete_vm(vm_id: str) -> Response:
        await runtime.delete_vm(vm_id)
        return Response(status_code=204)

    @app.get("/v1/vms/{vm_id}/console", response_class=PlainTextResponse, summary="Console tail")
    async def console(vm_id: str, tail: int = Query(100, ge=1, le=100_000)) -> str:
        return runtime.console(vm_id, tail)

    from nexus.agent import snapshots  # snapshot / restore / clone routes (own module)

    snapshots.add_routes(app, runtime)
    from nexus.agent.guestapi import register_guest_routes  # exec, shell, console ws, metrics

    register_guest_routes(app, runtime, get_token)
    from nexus.agent import netwire_api  # networks, port forwards, volumes (own module)

    netwire_api.install(app, runtime)
    return app
