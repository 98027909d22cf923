"""Guest images: a kernel (+ optional initrd) and an ext4 root filesystem, content-addressed."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Image(ResourceMixin, Base):
    """An image in the manager's catalogue; files live in ``<state_dir>/images/<id>/``."""

    __tablename__ = "images"
    name: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    source: Mapped[str] = mapped_column(String(32), nullable=False)  # build:<name>|import|upload
    public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    kernel_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    initrd_sha256: Mapped[str | None] = mapped_column(String(64))
    rootfs_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    kernel_version: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    rootfs_size_mib: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    path: Mapped[str] = mapped_column(String(512), nullable=False)


track(Image, Tracked("image"))
