"""The image catalogue: build (operation), import from local files, streamed upload, resolve,
delete (refused while a VM uses the image). Files live in ``<state_dir>/images/<id>/`` as
``vmlinuz`` (+ ``vmlinux``), ``initrd.img`` and ``rootfs.ext4``; rows carry their SHA-256.

Uploaded and imported files are untrusted: the root file system must be raw ext4 (no disk
container header, a clean unprivileged ``e2fsck -fn``) and the kernel a bzImage or ELF
(:mod:`nexus.images.checks`); anything else is a 422 and leaves nothing behind. Uploads are
authorized before a byte of the body is read."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from nexus.core.files import copy_file, sha256_file
from nexus.core.ids import new_id
from nexus.images.build import ImageBuildError, build_image
from nexus.images.checks import (
    ImageCheckError,
    check_ext4_magic,
    check_kernel,
    check_rootfs,
    refuse_container,
)
from nexus.manager.features.audit import service as audit
from nexus.manager.features.images import upload as uploads
from nexus.manager.features.images.models import Image
from nexus.manager.features.images.schemas import (
    NAME_PATTERN,
    ImageBuild,
    ImageImport,
    ImageUpdate,
)
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.quotas import service as quotas
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    denial,
    ensure_can_create,
    ensure_can_modify,
    ensure_role,
    ensure_visible,
)

KERNEL_FILES = ("vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4")


def snapshot(img: Image) -> dict[str, Any]:
    """Audit view."""
    return {"name": img.name, "source": img.source, "rootfs_sha256": img.rootfs_sha256}


def image_dir(state: ManagerState, image_id: str) -> Path:
    """Where an image's files live."""
    return state.settings.state_dir / "images" / image_id


# "move": our temp file; "copy": someone else's file; "link": our own build cache's file
Placement = Literal["move", "copy", "link"]


def _place(src: Path, dst: Path, how: Placement) -> None:
    """Put ``src`` at ``dst``. Files we do not own are copied, never hard-linked: a link
    would let their owner change the image after it was checked and hashed, and the
    check changes the group of the file it checks."""
    if how == "move":
        os.replace(src, dst)
        return
    if how == "link":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    copy_file(src, dst)


def _store_files(
    files: dict[str, Path],
    dest: Path,
    how: Placement,
    *,
    verify: bool,
    check_uid: int,
    check_timeout_s: float,
) -> dict[str, str]:
    """Place, check and hash the files in ``dest``; returns name -> sha256. With ``verify``
    (untrusted files) the rootfs must pass :func:`check_rootfs`; a failed check is a 422
    and removes ``dest``."""
    try:
        for name, p in files.items():
            if not p.is_file():
                raise BadRequest(f"{name}: {str(p)[:200]} is not a readable file")
        if verify:  # first: a container header says more than "no ext4 magic"
            refuse_container(files["rootfs.ext4"])
        check_kernel(files["vmlinuz"])
        check_ext4_magic(files["rootfs.ext4"])
    except ImageCheckError as exc:
        raise ValidationFailed(str(exc)) from exc
    except OSError as exc:
        raise BadRequest(f"cannot read the image files: {exc.strerror}") from exc
    dest.mkdir(mode=0o700, parents=True, exist_ok=False)
    try:
        hashes = {}
        for name, src in files.items():
            _place(src, dest / name, how)
        if verify:
            check_rootfs(dest / "rootfs.ext4", uid=check_uid, timeout_s=check_timeout_s)
        for name in files:
            hashes[name] = sha256_file(dest / name)
        return hashes
    except ImageCheckError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ValidationFailed(str(exc)) from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


async def _register(
    s: AsyncSession,
    state: ManagerState,
    *,
    owner_id: str,
    name: str,
    source: str,
    files: dict[str, Path],
    description: str = "",
    public: bool = False,
    kernel_version: str = "",
    how: Placement = "copy",
    verify: bool = True,
) -> Image:
    image_id = new_id("img")
    dest = image_dir(state, image_id)
    hashes = await asyncio.to_thread(
        _store_files,
        files,
        dest,
        how,
        verify=verify,
        check_uid=state.settings.image_check_uid,
        check_timeout_s=state.settings.image_check_timeout_s,
    )
    existing = (
        await s.execute(
            select(Image).where(
                Image.created_by_user_id == owner_id,
                Image.name == name,
                Image.kernel_sha256 == hashes["vmlinuz"],
                Image.rootfs_sha256 == hashes["rootfs.ext4"],
                Image.initrd_sha256 == hashes.get("initrd.img"),
            )
        )
    ).scalar_one_or_none()
    if existing is not None:  # content-addressed: same content, same image
        shutil.rmtree(dest, ignore_errors=True)
        return existing
    img = Image(
        id=image_id,
        name=name,
        description=description,
        source=source,
        public=public,
        kernel_sha256=hashes["vmlinuz"],
        initrd_sha256=hashes.get("initrd.img"),
        rootfs_sha256=hashes["rootfs.ext4"],
        kernel_version=kernel_version,
        size_bytes=sum((dest / n).stat().st_size for n in hashes),
        rootfs_size_mib=(dest / "rootfs.ext4").stat().st_size // (1024 * 1024),
        path=str(dest),
        created_by_user_id=owner_id,
    )
    s.add(img)
    await s.flush()
    return img


async def build_and_register(
    state: ManagerState,
    *,
    owner: Principal | None,
    owner_id: str,
    body: ImageBuild,
    progress: operations.Progress | None = None,
    public: bool = True,
) -> Image:
    """Build (or take from the cache) a Nexus image and add it to the catalogue (``public``
    only when an admin built it: the caller decides, see :func:`start_build`). Our own
    builder's output is trusted: it is hard-linked from the build cache, not re-checked."""
    loop = asyncio.get_running_loop()

    def cb(pct: float, msg: str) -> None:
        if progress is not None:
            asyncio.run_coroutine_threadsafe(progress(int(pct * 0.9), msg), loop)  # type: ignore[arg-type]

    try:
        built = await asyncio.to_thread(
            build_image, body.name, state.settings.cache_dir, progress=cb, force=body.force
        )
    except ImageBuildError as exc:
        raise BadRequest(f"image build failed: {exc}") from exc
    files = {n: built.dir / n for n in KERNEL_FILES if (built.dir / n).exists()}
    async with state.db.session() as s:
        img = await _register(
            s,
            state,
            owner_id=owner_id,
            name=body.name,
            source=f"build:{body.name}",
            files=files,
            description=f"Nexus {body.name} image (kernel {built.manifest.get('kernel_version')})",
            public=public,
            kernel_version=str(built.manifest.get("kernel_version", "")),
            how="link",
            verify=False,
        )
        audit.record(
            s,
            actor=owner,
            action="image.build",
            resource_type="image",
            resource_id=img.id,
            after=snapshot(img),
        )
        return img


async def start_build(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: ImageBuild
) -> Operation:
    """Queue an image build as an operation. An operator's build is a private image of
    theirs; an admin's is public unless ``public: false``. Asking for a public image, or for
    ``force`` (it clears the build cache every user's builds share), needs an admin."""
    ensure_can_create(principal, "image.build", "image")
    if body.force and not principal.is_admin:
        raise Forbidden(
            "only an admin may force a rebuild (it clears the shared build cache)",
            audit=denial("image.build", "image"),
        )
    if body.public and not principal.is_admin:
        raise Forbidden(
            "only an admin may build a public image; omit public for a private one",
            audit=denial("image.build", "image"),
        )
    public = principal.is_admin if body.public is None else body.public
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="image.build",
        resource_type="image",
        add={"images": 1},
    )
    op = operations.create(
        db_session, principal=principal, kind="image.build", resource_type="image"
    )
    await db_session.commit()

    async def work(progress: operations.Progress) -> dict[str, Any]:
        img = await build_and_register(
            state,
            owner=principal,
            owner_id=principal.user_id,
            body=body,
            progress=progress,
            public=public,
        )
        return {"image_id": img.id, "name": img.name}

    operations.start(state, op.id, work, kind="image.build")
    return op


async def import_image(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: ImageImport
) -> Image:
    """Register files on the manager's machine (admin only: it reads local paths)."""
    ensure_role(principal, "image.import", "image", "admin")
    files = {"vmlinuz": Path(body.kernel_path), "rootfs.ext4": Path(body.rootfs_path)}
    if body.initrd_path:
        files["initrd.img"] = Path(body.initrd_path)
    img = await _register(
        db_session,
        state,
        owner_id=principal.user_id,
        name=body.name,
        source="import",
        files=files,
        description=body.description,
        public=body.public,
    )
    audit.record(
        db_session,
        actor=principal,
        action="image.import",
        resource_type="image",
        resource_id=img.id,
        after=snapshot(img),
    )
    return img


async def upload_image(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    content_type: str,
    content_length: str | None,
    body: AsyncIterable[bytes],
) -> Image:
    """Receive a streamed multipart upload and register it as a private image.

    Order matters (issue 12): role and token scope first, then the size limit from
    Content-Length, a concurrency slot and the free space — all before a byte of ``body``
    is read — then the body is streamed to a temporary directory, checked and moved."""
    ensure_can_create(principal, "image.upload", "image")
    if "write" not in principal.scopes:
        raise Forbidden(
            "this token has read scope only; uploads need the 'write' scope",
            audit=denial("image.upload", "image"),
        )
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="image.upload",
        resource_type="image",
        add={"images": 1},
    )
    limit = state.settings.max_upload_bytes
    declared = uploads.declared_length(content_length, limit)
    root = state.settings.state_dir / "images"
    async with uploads.upload_slot(state):
        await asyncio.to_thread(uploads.ensure_free_space, root, declared or limit)
        up = await uploads.receive_upload(body, content_type, root, limit)
        try:
            return await _register_upload(db_session, state, principal, up)
        finally:
            await asyncio.to_thread(up.cleanup)


async def _register_upload(
    db_session: AsyncSession, state: ManagerState, principal: Principal, up: uploads.UploadedImage
) -> Image:
    """Register uploaded temp files after checking the name and the client's SHA-256s."""
    name = up.fields["name"]
    if not re.match(NAME_PATTERN, name):
        raise BadRequest(f"name '{name[:80]}' must match {NAME_PATTERN}")
    expected = {
        fname: up.fields[f"{part}_sha256"]
        for part, fname in uploads.FILE_PARTS.items()
        if up.fields.get(f"{part}_sha256") and fname in up.files
    }
    for part, want in expected.items():
        got = await asyncio.to_thread(sha256_file, up.files[part])
        if got != want.lower():
            raise BadRequest(f"{part}: checksum mismatch (expected {want[:80]}, got {got})")
    img = await _register(
        db_session,
        state,
        owner_id=principal.user_id,
        name=name,
        source="upload",
        files=up.files,
        description=up.fields.get("description", "")[:1000],
        how="move",
    )
    audit.record(
        db_session,
        actor=principal,
        action="image.upload",
        resource_type="image",
        resource_id=img.id,
        after=snapshot(img),
    )
    return img


def _visible(principal: Principal) -> Any:
    if principal.is_admin:
        return True
    return or_(Image.public.is_(True), Image.created_by_user_id == principal.user_id)


async def list_images(*, db_session: AsyncSession, principal: Principal) -> list[Image]:
    """Images the caller may use: public ones and their own (admin: all)."""
    q = select(Image).where(_visible(principal)).order_by(Image.name, Image.created_at.desc())
    return list((await db_session.execute(q)).scalars().all())


async def get_image(*, db_session: AsyncSession, principal: Principal, image_id: str) -> Image:
    """One image the caller may see."""
    return ensure_visible(principal, await db_session.get(Image, image_id), "image", image_id)


async def resolve(*, db_session: AsyncSession, principal: Principal, ref: str) -> Image:
    """An image by id or by name (own images first, then public; newest wins)."""
    img = await db_session.get(Image, ref)
    if img is not None and (
        principal.is_admin or img.public or img.created_by_user_id == principal.user_id
    ):
        return img
    q = (
        select(Image)
        .where(Image.name == ref, _visible(principal))
        .order_by((Image.created_by_user_id == principal.user_id).desc(), Image.created_at.desc())
        .limit(1)
    )
    img = (await db_session.execute(q)).scalar_one_or_none()
    if img is None:
        raise NotFound(
            f"image '{ref}' not found; list images with `nexus image list` (GET /v1/images) "
            "or build the default one with `nexus image build default` (POST /v1/images/build)"
        )
    return img


async def update_image(
    *, db_session: AsyncSession, principal: Principal, image_id: str, body: ImageUpdate
) -> Image:
    """Change description or visibility (owner/admin; making public needs admin)."""
    img = await get_image(db_session=db_session, principal=principal, image_id=image_id)
    ensure_can_modify(principal, img, "image", "image.update")
    if body.public is not None and body.public != img.public:
        ensure_role(principal, "image.update", "image", "admin")
        img.public = body.public
    if body.description is not None:
        img.description = body.description
    audit.record(
        db_session,
        actor=principal,
        action="image.update",
        resource_type="image",
        resource_id=img.id,
        after=body.model_dump(exclude_none=True),
    )
    return img


async def delete_image(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, image_id: str
) -> None:
    """Delete an image and its files; refused (409) while a VM or a snapshot uses it (VMs
    boot its kernel, and their disks and snapshot disks are overlays of its rootfs)."""
    from nexus.manager.features.snapshots.models import Snapshot
    from nexus.manager.features.vms.models import Vm

    img = await get_image(db_session=db_session, principal=principal, image_id=image_id)
    ensure_can_modify(principal, img, "image", "image.delete")
    users = (
        await db_session.execute(select(func.count()).select_from(Vm).where(Vm.image_id == img.id))
    ).scalar_one()
    if users:
        raise Conflict(f"image '{img.name}' is used by {users} VM(s); delete them first")
    snaps = (
        await db_session.execute(
            select(func.count()).select_from(Snapshot).where(Snapshot.image_id == img.id)
        )
    ).scalar_one()
    if snaps:
        raise Conflict(f"image '{img.name}' is used by {snaps} snapshot(s); delete them first")
    await db_session.delete(img)
    audit.record(
        db_session,
        actor=principal,
        action="image.delete",
        resource_type="image",
        resource_id=img.id,
        before=snapshot(img),
    )
    await db_session.flush()
    shutil.rmtree(img.path, ignore_errors=True)


def manifest_of(img: Image) -> dict[str, Any]:
    """What an agent needs to boot this image."""
    return {
        "id": img.id,
        "kernel_sha256": img.kernel_sha256,
        "initrd_sha256": img.initrd_sha256,
        "rootfs_sha256": img.rootfs_sha256,
        "source_dir": img.path,
    }
