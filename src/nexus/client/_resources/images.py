"""Guest images (``/v1/images``): build, import, upload, list, delete."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from nexus.client._base import AsyncCollection, Resource, SyncCollection


class Image(Resource):
    """A kernel (+ initrd) and an ext4 rootfs, content-addressed by SHA-256."""

    id: str
    name: str
    description: str = ""
    source: str
    public: bool
    kernel_sha256: str
    initrd_sha256: str | None = None
    rootfs_sha256: str
    kernel_version: str = ""
    size_bytes: int
    rootfs_size_mib: int
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Images(SyncCollection[Image]):
    """``client.images``.

    Example:
        >>> img = client.images.build("default")           # an operation; waits
        >>> client.images.upload("mine", kernel="vmlinuz", rootfs="root.ext4")
    """

    path = "/v1/images"
    model = Image

    def build(
        self,
        name: Literal["default", "test"] = "default",
        *,
        force: bool = False,
        public: bool | None = None,
        wait: bool = True,
        timeout: float | None = 1800,
    ) -> Any:
        """Build a Nexus image from Debian packages (cached); returns the Image. ``force``
        and ``public=True`` are admin-only; ``None`` = public for an admin, private for an
        operator."""
        body: dict[str, Any] = {"name": name, "force": force}
        if public is not None:
            body["public"] = public
        resp = self._http.request("POST", f"{self.path}/build", json=body)
        if not wait:
            return self._client.operations._model(resp.json())
        op = self._client.operations.wait(resp.json()["id"], timeout=timeout)
        if op.status != "succeeded":
            from nexus.client._errors import OperationFailed

            raise OperationFailed(op)
        return self.get(str((op.result or {})["image_id"]))

    def import_(
        self,
        name: str,
        *,
        kernel_path: str,
        rootfs_path: str,
        initrd_path: str | None = None,
        description: str = "",
        public: bool = False,
    ) -> Image:
        """Register files that are already on the manager's machine (admin)."""
        body = {
            "name": name,
            "kernel_path": kernel_path,
            "rootfs_path": rootfs_path,
            "initrd_path": initrd_path,
            "description": description,
            "public": public,
        }
        img: Image = self._create(body)
        return img

    def update(
        self, id: str, *, description: str | None = None, public: bool | None = None
    ) -> Image:
        """Change an image's description, or make it public/private (owner or admin)."""
        img: Image = self._update(id, {"description": description, "public": public})
        return img

    def upload(
        self,
        name: str,
        *,
        kernel: str | Path,
        rootfs: str | Path,
        initrd: str | Path | None = None,
        description: str = "",
        verify: bool = True,
    ) -> Image:
        """Upload local files (streamed); with ``verify`` the server checks their SHA-256."""
        parts = {"kernel": Path(kernel), "rootfs": Path(rootfs)}
        if initrd:
            parts["initrd"] = Path(initrd)
        data = {"name": name, "description": description}
        if verify:
            data |= {f"{k}_sha256": sha256_of(p) for k, p in parts.items()}
        with ExitStack() as stack:
            files = {k: (p.name, stack.enter_context(p.open("rb"))) for k, p in parts.items()}
            resp = self._http.request(
                "POST", f"{self.path}/upload", data=data, files=files, timeout=None
            )
        return Image.model_validate(resp.json())


class AsyncImages(AsyncCollection[Image]):
    """``AsyncClient.images`` (list/get/delete; build via :meth:`build`)."""

    path = "/v1/images"
    model = Image

    async def update(
        self, id: str, *, description: str | None = None, public: bool | None = None
    ) -> Image:
        """Change an image's description or visibility; see :meth:`Images.update`."""
        img: Image = await self._update(id, {"description": description, "public": public})
        return img

    async def build(
        self, name: Literal["default", "test"] = "default", *, timeout: float | None = 1800
    ) -> Image:
        """Build a Nexus image (cached) and return it."""
        resp = await self._http.request("POST", f"{self.path}/build", json={"name": name})
        op = await self._client.operations.wait(resp.json()["id"], timeout=timeout)
        if op.status != "succeeded":
            from nexus.client._errors import OperationFailed

            raise OperationFailed(op)
        return await self.get(str((op.result or {})["image_id"]))
