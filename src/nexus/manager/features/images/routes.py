"""/v1/images: the guest image catalogue."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.images import service
from nexus.manager.features.images.schemas import (
    NAME_PATTERN,
    ImageBuild,
    ImageImport,
    ImagePage,
    ImageRead,
    ImageUpdate,
)
from nexus.manager.features.operations.schemas import OperationRead
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import (
    CreateLimit,
    CurrentPrincipal,
    DbSession,
    ExpensiveLimit,
    State,
)

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post(
    "/build",
    response_model=OperationRead,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[CreateLimit, ExpensiveLimit],
    responses={
        403: problem("viewers may not build; `force` and `public: true` need an admin (audited)"),
    },
)
async def build(
    db: DbSession, state: State, principal: CurrentPrincipal, body: ImageBuild | None = None
) -> OperationRead:
    """Build the ``default`` (debootstrap + python3 + guest agent) or ``test`` (busybox) image
    from Debian packages, as an operation with progress. Cached by content. An operator's
    build is a private image of theirs; an admin's is public unless `public: false`.
    `force` (rebuild, clearing the shared build cache) is admin-only; builds on one cache
    never overlap (a lock file in the cache)."""
    op = await service.start_build(
        db_session=db, state=state, principal=principal, body=body or ImageBuild()
    )
    return OperationRead.model_validate(op)


@router.post(
    "",
    response_model=ImageRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[CreateLimit],
    responses={
        400: problem("a path is not a readable file"),
        403: problem("only admins import (it reads local paths)"),
        422: problem(
            "the rootfs is a disk container (qcow2, vmdk, VHD(X), VDI, LUKS...), not ext4, or "
            "fails `e2fsck -fn`; or the kernel is not a bzImage/ELF"
        ),
    },
)
async def import_image(
    body: ImageImport, db: DbSession, state: State, principal: CurrentPrincipal
) -> ImageRead:
    """Import a kernel (+ initrd) and an ext4 rootfs from files on the manager (admin). The
    files are copied (never linked) and checked like uploads: raw ext4 only."""
    img = await service.import_image(db_session=db, state=state, principal=principal, body=body)
    return ImageRead.model_validate(img)


@router.post(
    "/upload",
    response_model=ImageRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[CreateLimit],
    responses={
        400: problem(
            "not multipart/form-data, a missing or unknown part, a bad name or a checksum mismatch"
        ),
        403: problem(
            "viewers and read-scoped tokens may not upload (refused before the "
            "body is read; audited)"
        ),
        413: problem("Content-Length or the streamed body over `max_upload_bytes`"),
        422: problem(
            "the rootfs is a disk container (qcow2, vmdk, VHD(X), VDI, LUKS...), not ext4, or "
            "fails `e2fsck -fn`; or the kernel is not a bzImage/ELF"
        ),
        503: problem("`max_concurrent_uploads` uploads already in progress (Retry-After)"),
        507: problem("the image directory lacks the free space for the upload"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "kernel", "rootfs"],
                        "properties": {
                            "name": {"type": "string", "pattern": NAME_PATTERN},
                            "description": {"type": "string"},
                            "kernel": {"type": "string", "format": "binary"},
                            "rootfs": {"type": "string", "format": "binary"},
                            "initrd": {"type": "string", "format": "binary"},
                            "kernel_sha256": {"type": "string"},
                            "rootfs_sha256": {"type": "string"},
                            "initrd_sha256": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def upload(
    request: Request, db: DbSession, state: State, principal: CurrentPrincipal
) -> JSONResponse:
    """Upload an image as multipart/form-data (streamed to disk, size-limited by
    ``max_upload_bytes``); optional ``*_sha256`` parts are verified. The rootfs must be raw
    ext4 that passes `e2fsck -fn`; the image is private to you. Nothing is read before you
    are authorized, a slot is free and the disk has room."""
    img = await service.upload_image(
        db_session=db,
        state=state,
        principal=principal,
        content_type=request.headers.get("content-type", ""),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
    )
    return JSONResponse(ImageRead.model_validate(img).model_dump(mode="json"), status_code=201)


@router.get("", response_model=ImagePage)
async def list_images(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> ImagePage:
    """Images you may use: public ones and your own."""
    everything = await service.list_images(db_session=db, principal=principal)
    rows, nxt = page_of(everything, cursor, limit)
    return ImagePage(items=[ImageRead.model_validate(i) for i in rows], next_cursor=nxt)


@router.get("/{image_id}", response_model=ImageRead)
async def get_image(image_id: str, db: DbSession, principal: CurrentPrincipal) -> ImageRead:
    """One image."""
    return ImageRead.model_validate(
        await service.get_image(db_session=db, principal=principal, image_id=image_id)
    )


@router.patch("/{image_id}", response_model=ImageRead)
async def update_image(
    image_id: str, body: ImageUpdate, db: DbSession, principal: CurrentPrincipal
) -> ImageRead:
    """Change description or visibility."""
    return ImageRead.model_validate(
        await service.update_image(db_session=db, principal=principal, image_id=image_id, body=body)
    )


@router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_image(
    image_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> None:
    """Delete an image; refused (409) while any VM uses it."""
    await service.delete_image(db_session=db, state=state, principal=principal, image_id=image_id)
