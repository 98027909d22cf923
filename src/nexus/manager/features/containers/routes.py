"""/v1/container-images and /v1/containers: OCI images run as containers, each in its own
microVM."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse

from nexus.core.errors import Problem
from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, cursor_offset
from nexus.core.paging import next_offset_cursor as next_cursor
from nexus.manager.features.containers import service
from nexus.manager.features.containers.schemas import (
    IMAGE_NAME_PATTERN,
    ContainerCreate,
    ContainerExec,
    ContainerExecResult,
    ContainerImagePage,
    ContainerImagePull,
    ContainerImageRead,
    ContainerLogs,
    ContainerPage,
    ContainerRead,
    ContainerShellTicket,
    ContainerUpdate,
)
from nexus.manager.features.guest import service as guest
from nexus.manager.features.guest.routes import deny
from nexus.manager.features.operations.responses import ACCEPTED
from nexus.manager.features.operations.schemas import OperationRead
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

images_router = APIRouter(prefix="/v1/container-images", tags=["containers"])
router = APIRouter(prefix="/v1/containers", tags=["containers"])

NOT_YOURS: dict[int | str, dict[str, Any]] = {
    403: problem("a viewer, or not your container"),
    404: problem("no such container (or not one you may see)"),
}
BUSY: dict[int | str, dict[str, Any]] = {
    409: problem("the container's VM is not running (yet), or the guest refused"),
    502: problem("the host agent failed"),
}


# --- images ------------------------------------------------------------------------------


@images_router.post(
    "",
    status_code=202,
    responses={
        **ACCEPTED,
        403: problem("viewers may not pull images"),
        409: problem("you already have an image of that name"),
    },
    dependencies=[CreateLimit],
)
async def pull_image(
    body: ContainerImagePull, db: DbSession, state: State, principal: CurrentPrincipal
) -> JSONResponse:
    """Pull an image from a registry (`skopeo copy`), unpack its layers safely (whiteouts and
    opaque directories honoured; `..`, symlink escapes and oversize images refused; device
    nodes skipped) into a read-only ext4 cached per manifest digest. An operation: its result
    is `{"image_id": ...}`. Credentials are stored sealed and never returned."""
    op = await service.pull_image(db_session=db, state=state, principal=principal, body=body)
    return JSONResponse(
        OperationRead.model_validate(op).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/v1/operations/{op.id}"},
    )


@images_router.post(
    "/import",
    status_code=201,
    response_model=ContainerImageRead,
    responses={
        400: problem("not an OCI layout or docker archive, or a layer was refused"),
        403: problem("viewers (or read-only tokens) may not import images"),
        409: problem("you already have an image of that name"),
        413: problem("the archive exceeds max_upload_bytes"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the tar archive (any Content-Type; e.g. application/x-tar)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def import_image(
    request: Request,
    state: State,
    principal: CurrentPrincipal,
    name: str = Query(pattern=IMAGE_NAME_PATTERN, description="the image's name"),
) -> ContainerImageRead:
    """Import an OCI image layout tar (`skopeo copy ... oci-archive:`) or a docker archive
    (`docker save`) sent as the request body. Unpacked like a pull."""
    row = await service.upload_archive(
        state=state,
        principal=principal,
        name=name,
        content_length=request.headers.get("content-length"),
        body=request.stream(),
    )
    return ContainerImageRead.of(row)


@images_router.get("", response_model=ContainerImagePage)
async def list_images(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> ContainerImagePage:
    """Container images you may see (admin: all), newest first."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_images(
        db_session=db, principal=principal, limit=limit, offset=offset
    )
    return ContainerImagePage(
        items=[ContainerImageRead.of(r) for r in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


@images_router.get(
    "/{image}", response_model=ContainerImageRead, responses={404: problem("no such image")}
)
async def get_image(image: str, db: DbSession, principal: CurrentPrincipal) -> ContainerImageRead:
    """One container image, by id or name, with its config."""
    return ContainerImageRead.of(
        await service.get_image(db_session=db, principal=principal, ref=image)
    )


@images_router.delete(
    "/{image}",
    status_code=204,
    responses={**NOT_YOURS, 409: problem("a container uses the image")},
)
async def delete_image(
    image: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete a container image no container uses (its files go with the last image of the
    same digest)."""
    await service.delete_image(db_session=db, state=state, principal=principal, ref=image)
    return Response(status_code=204)


# --- containers --------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=ContainerRead,
    responses={
        400: problem("the image has no entrypoint and no command; or a `raw` volume"),
        403: problem(
            "viewers may not create containers; a host port outside the range; or a volume "
            "you may see but not modify"
        ),
        404: problem("no such container image, base image or volume (or not yours)"),
        409: problem(
            "a container of that name exists, the host port is taken, or a volume is "
            "attached to another VM (or lives on another host)"
        ),
        422: problem("a bad mount path (relative, '..', '/', under /proc /sys /dev, nested)"),
    },
    dependencies=[CreateLimit],
)
async def create_container(
    body: ContainerCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> ContainerRead:
    """Run a container image in a microVM of its own: the base image boots, the container
    image's file system is attached read-only under an overlay with a writable layer, and
    the entrypoint runs in its own mount and PID namespace (pivot_root) as the image's user.
    Ports are published through the VM port-forward machinery; `volumes` (yours, `ext4`,
    attached nowhere else) are attached to the VM and bind-mounted at their `mount_path`
    (read-only when asked). A refused port or volume undoes the whole create. The container
    is `creating` until the VM runs and the entrypoint starts (poll
    `GET /v1/containers/{id}`)."""
    return ContainerRead.model_validate(
        await service.create_container(db_session=db, state=state, principal=principal, body=body)
    )


@router.get("", response_model=ContainerPage)
async def list_containers(
    db: DbSession,
    principal: CurrentPrincipal,
    state: str | None = Query(None, max_length=16, description="only containers in this state"),
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> ContainerPage:
    """Containers you may see (admin: all), newest first."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_containers(
        db_session=db, principal=principal, state=state, limit=limit, offset=offset
    )
    return ContainerPage(
        items=[ContainerRead.model_validate(r) for r in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


@router.get("/{container}", response_model=ContainerRead, responses=NOT_YOURS)
async def get_container(
    container: str, db: DbSession, principal: CurrentPrincipal
) -> ContainerRead:
    """One container by id or name: state, exit code, restart count, last error."""
    return ContainerRead.model_validate(
        await service.get_container(db_session=db, principal=principal, ref=container)
    )


@router.patch("/{container}", response_model=ContainerRead, responses=NOT_YOURS)
async def update_container(
    container: str, body: ContainerUpdate, db: DbSession, principal: CurrentPrincipal
) -> ContainerRead:
    """Change the restart policy."""
    return ContainerRead.model_validate(
        await service.update_container(db_session=db, principal=principal, ref=container,
                                       body=body)
    )  # fmt: skip


@router.delete("/{container}", status_code=202, responses={**NOT_YOURS, **ACCEPTED})
async def delete_container(
    container: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete the container, its logs and its microVM (port forwards go with the VM). Answers
    202 with the VM's deletion operation (204 when there was no VM left)."""
    op = await service.delete_container(
        db_session=db, state=state, principal=principal, ref=container
    )
    if op is None:
        return Response(status_code=204)
    return JSONResponse(OperationRead.model_validate(op).model_dump(mode="json"), 202)


@router.post("/{container}/start", response_model=ContainerRead, responses={**NOT_YOURS, **BUSY})
async def start_container(
    container: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> ContainerRead:
    """Start the entrypoint again (the writable layer is kept)."""
    return ContainerRead.model_validate(
        await service.start_container(db_session=db, state=state, principal=principal,
                                      ref=container)
    )  # fmt: skip


@router.post("/{container}/stop", response_model=ContainerRead, responses={**NOT_YOURS, **BUSY})
async def stop_container(
    container: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    timeout: float = Query(10, ge=0, le=300, description="seconds between SIGTERM and SIGKILL"),
) -> ContainerRead:
    """Send SIGTERM to the entrypoint, then SIGKILL after `timeout` seconds. A stopped
    container is not restarted by its restart policy."""
    return ContainerRead.model_validate(
        await service.stop_container(db_session=db, state=state, principal=principal,
                                     ref=container, timeout_s=timeout)
    )  # fmt: skip


@router.post("/{container}/restart", response_model=ContainerRead, responses={**NOT_YOURS, **BUSY})
async def restart_container(
    container: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> ContainerRead:
    """Stop (SIGTERM, then SIGKILL) and start the entrypoint."""
    return ContainerRead.model_validate(
        await service.start_container(db_session=db, state=state, principal=principal,
                                      ref=container, action="restart")
    )  # fmt: skip


@router.post(
    "/{container}/exec", response_model=ContainerExecResult, responses={**NOT_YOURS, **BUSY}
)
async def exec_container(
    container: str, body: ContainerExec, db: DbSession, state: State, principal: CurrentPrincipal
) -> ContainerExecResult:
    """Run a command inside the running container: its root file system, namespaces, user
    (or `user`) and env (plus `env`)."""
    return await service.exec_in_container(
        db_session=db, state=state, principal=principal, ref=container, body=body
    )


@router.get(
    "/{container}/logs",
    response_model=ContainerLogs,
    responses={
        **NOT_YOURS,
        200: {"content": {"application/x-ndjson": {}}, "description": "lines (follow: NDJSON)"},
    },
)
async def container_logs(
    container: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    follow: bool = Query(False, description="stream NDJSON lines until the container stops"),
    tail: int | None = Query(None, ge=1, le=100_000, description="only the last N lines"),
    since: datetime | None = Query(None, description="only lines at or after this time"),
) -> Any:
    """The container's stdout/stderr lines with timestamps, kept on the host (size-capped)
    so they survive a restart of the guest."""
    if follow:
        ctr = await service.get_container(db_session=db, principal=principal, ref=container)
        return StreamingResponse(
            service.follow_logs(state, principal, ctr.id, tail=tail, since=since),
            media_type="application/x-ndjson",
        )
    lines = await service.get_logs(
        db_session=db, state=state, principal=principal, ref=container, tail=tail, since=since
    )
    return ContainerLogs(lines=lines)


@router.post(
    "/{container}/shell/ticket",
    response_model=ContainerShellTicket,
    status_code=201,
    responses={**NOT_YOURS, 409: problem("the container has no VM")},
)
async def create_shell_ticket(
    container: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> ContainerShellTicket:
    """A short-lived, single-use ticket for the terminal WebSocket, for browsers (which
    cannot set headers on a WebSocket): open `ws_path?ticket=<ticket>` within `expires_at`.
    Owners (operator) and admins, with a token that may write."""
    return await service.create_shell_ticket(
        db_session=db, principal=principal, state=state, ref=container
    )


@router.websocket("/{container}/shell/ws")
async def shell_ws(websocket: WebSocket, container: str) -> None:
    """Interactive terminal inside the running container: the image user's login shell in
    the container's namespaces and root, with its env. Authenticated before the upgrade
    (`Authorization: Bearer` or `?ticket=` from `POST /v1/containers/{id}/shell/ticket`);
    a refused upgrade answers a problem (401, 403, 404, 409). Binary frames are terminal
    data; send text frames `{"type": "resize", "cols": C, "rows": R}`; ends with
    `{"type": "exit", "exit_code": N}`. Query: `cols`, `rows`, `ticket`, and `command` (run
    by `/bin/sh -c` inside the container instead of the login shell)."""
    state = websocket.app.state.nexus
    try:
        await service.shell_session(state, websocket, container)
    except Problem as exc:
        await guest.audit_ws_denied(state, websocket, exc, "container.shell")
        await deny(websocket, exc)
