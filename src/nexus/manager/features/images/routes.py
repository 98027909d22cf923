"""/v1/images: the guest image catalogue."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from nexus.core.errors import BadRequest
from nexus.manager.deps import CreateLimit, CurrentPrincipal, DbSession, ExpensiveLimit, State
from nexus.manager.features.images import service
from nexus.manager.features.images.schemas import (
    NAME_PATTERN,
    ImageBuild,
    ImageImport,
    ImageRead,
    ImageUpdate,
)
from nexus.manager.features.images.upload import receive_upload
from nexus.manager.features.operations.schemas import OperationRead

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post(
    "/build",
    response_model=OperationRead,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[CreateLimit, ExpensiveLimit],
)
async def build(
    db: DbSession, state: State, principal: CurrentPrincipal, body: ImageBuild | None = None
) -> OperationRead:
    """Build the ``default`` (debootstrap + python3 + guest agent) or ``test`` (busybox) image
    from Debian packages, as an operation with progress. Cached by content."""
    op = await service.start_build(
        db_session=db, state=state, principal=principal, body=body or ImageBuild()
    )
    return OperationRead.model_validate(op)


@router.post(
    "", response_model=ImageRead, status_code=status.HTTP_201_CREATED, dependencies=[CreateLimit]
)
async def import_image(
    body: ImageImport, db: DbSession, state: State, principal: CurrentPrincipal
) -> ImageRead:
    """Import a kernel (+ initrd) and an ext4 rootfs from files on the manager (admin)."""
    img = await service.import_image(db_session=db, state=state, principal=principal, body=body)
    return ImageRead.model_validate(img)


@router.post(
    "/upload",
    response_model=ImageRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[CreateLimit],
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
    ``max_upload_bytes``); optional ``*_sha256`` parts are verified."""
    up = await receive_upload(
        request, state.settings.state_dir / "images", state.settings.max_upload_bytes
    )
    try:
        name = up.fields["name"]
        if not re.match(NAME_PATTERN, name):
            raise BadRequest(f"name '{name}' must match {NAME_PATTERN}")
        expected = {
            fname: up.fields[f"{part}_sha256"]
            for part, fname in (
                ("kernel", "vmlinuz"),
                ("rootfs", "rootfs.ext4"),
                ("initrd", "initrd.img"),
            )
            if up.fields.get(f"{part}_sha256") and fname in up.files
        }
        img = await service.register_upload(
            db_session=db,
            state=state,
            principal=principal,
            name=name,
            description=up.fields.get("description", ""),
            files=up.files,
            expected=expected,
        )
    finally:
        up.cleanup()
    return JSONResponse(ImageRead.model_validate(img).model_dump(mode="json"), status_code=201)


@router.get("", response_model=list[ImageRead])
async def list_images(db: DbSession, principal: CurrentPrincipal) -> list[ImageRead]:
    """Images you may use: public ones and your own."""
    return [
        ImageRead.model_validate(i)
        for i in await service.list_images(db_session=db, principal=principal)
    ]


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
