"""Functions, their immutable versions and their invocations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from nexus.core.db import Base, ResourceMixin
from nexus.manager.platform.outbox import Tracked, track


class Function(ResourceMixin, Base):
    """A serverless handler. Scaling settings (``concurrency``, ``min_warm``,
    ``max_instances``, ``max_queue``, ``idle_s``) live here and change in place; code and
    runtime settings live in :class:`FunctionVersion` rows, one per change. ``aliases`` maps
    an alias name to a version number (``latest`` follows the newest ready version)."""

    __tablename__ = "functions"
    __table_args__ = (
        UniqueConstraint("created_by_user_id", "name", name="uq_functions_owner_name"),
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    min_warm: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_instances: Mapped[int] = mapped_column(Integer, nullable=False, default=2)
    max_queue: Mapped[int] = mapped_column(Integer, nullable=False, default=32)
    idle_s: Mapped[int] = mapped_column(Integer, nullable=False, default=300)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    aliases: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)


class FunctionVersion(ResourceMixin, Base):
    """One immutable version: code, handler, runtime, env, memory and timeout. ``state``:
    building -> ready | failed. ``snapshot_id`` is the memory snapshot taken with the handler
    imported ("ready to handle"); ``boot_ready_ms`` the cold boot to that point."""

    __tablename__ = "function_versions"
    __table_args__ = (UniqueConstraint("function_id", "version", name="uq_function_versions"),)
    function_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("functions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    runtime: Mapped[str] = mapped_column(String(16), nullable=False)
    handler: Mapped[str] = mapped_column(String(255), nullable=False)
    code_kind: Mapped[str] = mapped_column(String(8), nullable=False)  # inline | zip
    code: Mapped[str] = mapped_column(Text, nullable=False)  # source, or the zip in base64
    code_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    memory_mib: Mapped[int] = mapped_column(Integer, nullable=False)
    timeout_s: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="building")
    state_reason: Mapped[str | None] = mapped_column(Text)
    snapshot_id: Mapped[str | None] = mapped_column(String(40))
    operation_id: Mapped[str | None] = mapped_column(String(40))
    boot_ready_ms: Mapped[int | None] = mapped_column(Integer)
    build_ms: Mapped[int | None] = mapped_column(Integer)


class FunctionInvocation(ResourceMixin, Base):
    """One invocation: its version, outcome, timings and (capped) logs. ``status``:
    queued -> running -> succeeded | error | timed_out | failed."""

    __tablename__ = "function_invocations"
    function_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("functions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    version: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(8), nullable=False, default="sync")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    cold_start: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    start_ms: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    vm_id: Mapped[str | None] = mapped_column(String(40))
    event_bytes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    logs: Mapped[str] = mapped_column(Text, nullable=False, default="")
    finished_at: Mapped[datetime | None] = mapped_column()


track(
    Function,
    Tracked(
        "function",
        ignore=frozenset({"latest_version"}),
        payload=("concurrency", "min_warm", "max_instances"),
    ),
)
track(
    FunctionVersion,
    Tracked(
        "function_version",
        state_attr="state",
        name_attr=None,
        ignore=frozenset({"operation_id"}),
        payload=("function_id", "version", "state_reason"),
    ),
)
track(
    FunctionInvocation,
    Tracked(
        "function_invocation",
        state_attr="status",
        name_attr=None,
        ignore=frozenset({"result", "logs", "start_ms", "vm_id", "cold_start", "version"}),
        payload=("function_id", "version", "cold_start", "duration_ms"),
    ),
)
