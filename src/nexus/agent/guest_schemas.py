"""Wire models of the agent's guest endpoints (exec, metrics); see docs/dev/contracts.md.

Between manager and agent, command output travels base64-encoded so arbitrary bytes
round-trip intact.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

MAX_OUTPUT_CAP = 64 * 1024 * 1024


class AgentExecRequest(BaseModel):
    """``POST /v1/vms/{id}/exec`` on the agent."""

    argv: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin_b64: str = ""
    timeout_s: float = Field(default=60.0, ge=0, le=86400)
    max_output: int = Field(default=16 * 1024 * 1024, ge=0, le=MAX_OUTPUT_CAP)


class AgentExecResult(BaseModel):
    """The result of one exec (output base64)."""

    exit_code: int
    stdout_b64: str
    stderr_b64: str
    duration_ms: int
    timed_out: bool
    truncated: bool
    signal: int | None = None


class HostVmMetrics(BaseModel):
    """What the host sees of one VM's VMM process and files."""

    vmm_pid: int | None = None
    cpu_time_s: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    disk_allocated_bytes: int | None = None
    disk_size_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


class GuestVmMetrics(BaseModel):
    """What the guest agent reports (``metrics`` op)."""

    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    cpus: int | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    mem_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None
    disk_free_bytes: int | None = None
    uptime_s: float | None = None
    procs: int | None = None


class VmMetrics(BaseModel):
    """``GET /v1/vms/{id}/metrics`` on the agent: one sample."""

    vm_id: str
    sampled_at: datetime
    state: str
    host: HostVmMetrics
    guest: GuestVmMetrics | None = None
    guest_error: str | None = None
