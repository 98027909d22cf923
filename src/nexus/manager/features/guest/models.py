"""Guest feature tables: single-use WebSocket tickets and VM metrics samples."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin


class GuestTicket(ResourceMixin, Base):
    """A short-lived, single-use credential for a browser WebSocket (``?ticket=``).

    Only the SHA-256 of the ticket is stored. ``purpose`` is ``shell``, ``console`` or
    ``metrics``; the ticket is valid for that purpose on that VM only.
    """

    __tablename__ = "guest_tickets"
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    vm_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True
    )
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    used_at: Mapped[datetime | None] = mapped_column()


class VmMetricSample(Base):
    """One metrics sample of a VM (host and guest side); kept for ``metrics_retention_s``."""

    __tablename__ = "vm_metric_samples"
    __table_args__ = (Index("ix_vm_metric_samples_vm_time", "vm_id", "sampled_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False
    )
    sampled_at: Mapped[datetime] = mapped_column(nullable=False, index=True)
    # host side
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    cpu_time_s: Mapped[float | None] = mapped_column(Float)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)
    net_rx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    net_tx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # guest side
    load1: Mapped[float | None] = mapped_column(Float)
    mem_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mem_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mem_available_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
