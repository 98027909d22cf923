"""Request and response bodies of the guest endpoints (exec, tickets, metrics)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TicketPurpose = Literal["shell", "console", "metrics"]


class ExecRequest(BaseModel):
    """``POST /v1/vms/{id}/exec``: run a command in the guest and wait for it."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        min_length=1, max_length=4096, description="argv; no shell unless you run one"
    )
    env: dict[str, str] | None = Field(default=None, description="merged over the guest's")
    cwd: str | None = Field(default=None, max_length=4096)
    stdin: str | None = Field(default=None, description="text fed to the command's stdin")
    stdin_base64: str | None = Field(default=None, description="binary stdin, base64")
    timeout_s: float = Field(
        default=60,
        gt=0,
        le=86400,
        description="the guest kills the command after this; at most the administrator's "
        "max_exec_timeout_s (422 above it)",
    )
    max_output_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        le=64 * 1024 * 1024,
        description="cap for stdout and for stderr (each), enforced by the host; the rest is "
        "discarded and truncated is set; at most max_exec_output_bytes (422 above it)",
    )

    @model_validator(mode="after")
    def _one_stdin(self) -> ExecRequest:
        if self.stdin is not None and self.stdin_base64 is not None:
            raise ValueError("give stdin or stdin_base64, not both")
        if not self.command[0]:
            raise ValueError("command[0] must not be empty")
        return self


class ExecResult(BaseModel):
    """What the command did. ``stdout``/``stderr`` are text (UTF-8, invalid bytes replaced);
    the ``*_base64`` fields carry the exact bytes."""

    exit_code: int
    stdout: str
    stderr: str
    stdout_base64: str
    stderr_base64: str
    duration_ms: int
    timed_out: bool
    truncated: bool
    signal: int | None = None


class TicketCreate(BaseModel):
    """``POST /v1/vms/{id}/shell/ticket`` (body optional)."""

    model_config = ConfigDict(extra="forbid")

    purpose: TicketPurpose = "shell"


class TicketRead(BaseModel):
    """A single-use WebSocket ticket: pass it as ``?ticket=`` within ``expires_at``."""

    ticket: str
    purpose: TicketPurpose
    vm_id: str
    expires_at: datetime
    ws_path: str


class MetricSample(BaseModel):
    """One sample: host side (VMM process, disk file, tap) and guest side (agent)."""

    model_config = ConfigDict(from_attributes=True)

    vm_id: str
    sampled_at: datetime
    cpu_percent: float | None = None
    cpu_time_s: float | None = None
    rss_bytes: int | None = None
    disk_allocated_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    load1: float | None = None
    mem_total_bytes: int | None = None
    mem_used_bytes: int | None = None
    mem_available_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None


class MetricsHistory(BaseModel):
    """Samples since ``since``, averaged into ``step``-second buckets."""

    vm_id: str
    since: datetime
    step_s: int
    points: list[MetricSample]
