"""Container images (OCI images unpacked into a read-only ext4) and containers (each in its
own microVM)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.core.sealing import SealedString
from nexus.manager.platform.outbox import Tracked, track


class ContainerImage(ResourceMixin, Base):
    """An OCI image: ``<state_dir>/container-images/<digest hex>/rootfs.ext4`` (shared by
    every row of the same manifest digest) and its config. ``source`` is ``upload`` or
    ``pull``; a pull keeps its reference and, for private registries, sealed credentials
    (never returned)."""

    __tablename__ = "container_images"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_container_images_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    reference: Mapped[str | None] = mapped_column(String(1024))
    digest: Mapped[str] = mapped_column(String(80), nullable=False, index=True)
    rootfs_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    path: Mapped[str] = mapped_column(String(512), nullable=False)
    registry_username: Mapped[str | None] = mapped_column(String(255))
    registry_password: Mapped[str | None] = mapped_column(SealedString(1024))
    tls_verify: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class Container(ResourceMixin, Base):
    """A container: its microVM (``vm_id``), what it runs, and the state the reconciler
    keeps (``state``: creating, running, exited, restarting, stopped, failed)."""

    __tablename__ = "containers"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_containers_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    image_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    vm_id: Mapped[str | None] = mapped_column(String(40), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    restart_policy: Mapped[str] = mapped_column(String(16), nullable=False, default="no")
    max_restarts: Mapped[int | None] = mapped_column(Integer)
    desired_state: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="creating")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    restart_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    next_restart_at: Mapped[datetime | None] = mapped_column()
    log_cursor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


track(
    ContainerImage,
    Tracked("container_image", payload=("digest", "source"), ignore=frozenset({"config"})),
)
track(
    Container,
    Tracked(
        "container",
        state_attr="state",
        verbs={"running": "started", "exited": "exited", "stopped": "stopped",
               "restarting": "restarting", "failed": "failed", "creating": "creating"},
        ignore=frozenset({"log_cursor", "next_restart_at", "spec"}),
        payload=("image_id", "vm_id", "exit_code", "restart_count"),
    ),
)  # fmt: skip
