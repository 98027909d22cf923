"""Function API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.paging import Page
from nexus.manager.features.vms.schemas import NAME_PATTERN

Runtime = Literal["python3.11"]
HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
ALIAS_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
MAX_CODE_BYTES = 512 * 1024
MAX_ENV = 64
CODE_DOC = (
    "the handler's code: inline Python source (written as `<module>.py` of `handler`), or "
    "`zip_base64`: a zip of the code tree (at most 512 KiB)"
)


class FunctionCode(BaseModel):
    """Inline source (one module) or a zip of the code tree, base64."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(default=None, description="Python source of the handler module")
    zip_base64: str | None = Field(default=None, description="a zip of the code, base64")

    @field_validator("source", "zip_base64")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) > MAX_CODE_BYTES * 4 // 3 + 4:
            raise ValueError(f"the code is larger than {MAX_CODE_BYTES} bytes")
        if v is not None and "\x00" in v:
            raise ValueError("the code must not contain NUL characters")
        return v


def _check_env(v: dict[str, str] | None) -> dict[str, str] | None:
    if v is None:
        return v
    if len(v) > MAX_ENV:
        raise ValueError(f"at most {MAX_ENV} environment variables")
    for k, val in v.items():
        if not k or len(k) > 128 or not (k[0].isalpha() or k[0] == "_"):
            raise ValueError(f"env: bad variable name '{k[:40]}'")
        if not all(c.isalnum() or c == "_" for c in k) or len(val) > 4096 or "\x00" in val:
            raise ValueError(f"env '{k[:40]}': names [A-Za-z0-9_], values up to 4096 chars")
    return v


class FunctionCreate(BaseModel):
    """``POST /v1/functions``: the first version is built at once (boot, import the handler,
    memory snapshot at "ready")."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="DNS label: a-z, 0-9, '-'")
    description: str = Field(default="", max_length=1000)
    runtime: Runtime = "python3.11"
    code: FunctionCode = Field(description=CODE_DOC)
    handler: str = Field(
        default="main.handler",
        max_length=255,
        pattern=HANDLER_PATTERN,
        description="`module.func`; called as func(event, context) or func(event)",
    )
    env: dict[str, str] = Field(default_factory=dict, description="environment of the handler")
    memory_mib: int = Field(default=256, ge=128, le=4096)
    timeout_s: int = Field(default=30, ge=1, le=900, description="per invocation")
    concurrency: int = Field(default=1, ge=1, le=64, description="invocations at once")
    min_warm: int = Field(default=0, ge=0, le=16, description="VMs kept warm (0: scale to zero)")
    max_instances: int = Field(default=2, ge=1, le=64, description="VMs at most")
    max_queue: int = Field(
        default=32, ge=0, le=1000, description="waiting invocations (429 beyond)"
    )
    idle_s: int = Field(default=300, ge=5, le=86400, description="idle VMs beyond min_warm stop")

    _env = field_validator("env")(_check_env)


class FunctionUpdate(BaseModel):
    """``PATCH /v1/functions/{id}``: a change of code, handler, runtime, env, memory or
    timeout builds a new immutable version (``latest`` moves to it once it is ready); the
    scaling settings change in place."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=1000)
    runtime: Runtime | None = None
    code: FunctionCode | None = Field(default=None, description=CODE_DOC)
    handler: str | None = Field(default=None, max_length=255, pattern=HANDLER_PATTERN)
    env: dict[str, str] | None = None
    memory_mib: int | None = Field(default=None, ge=128, le=4096)
    timeout_s: int | None = Field(default=None, ge=1, le=900)
    concurrency: int | None = Field(default=None, ge=1, le=64)
    min_warm: int | None = Field(default=None, ge=0, le=16)
    max_instances: int | None = Field(default=None, ge=1, le=64)
    max_queue: int | None = Field(default=None, ge=0, le=1000)
    idle_s: int | None = Field(default=None, ge=5, le=86400)

    _env = field_validator("env")(_check_env)


class FunctionVersionRead(BaseModel):
    """One immutable version. ``boot_ready_ms``: its cold boot up to "handler imported"."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    function_id: str
    version: int
    runtime: str
    handler: str
    code_kind: str
    code_sha256: str
    env: dict[str, str]
    memory_mib: int
    timeout_s: int
    state: str
    state_reason: str | None
    snapshot_id: str | None
    operation_id: str | None
    boot_ready_ms: int | None
    build_ms: int | None
    created_at: datetime


class FunctionRead(BaseModel):
    """A function, with its newest version and its aliases."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    concurrency: int
    min_warm: int
    max_instances: int
    max_queue: int
    idle_s: int
    latest_version: int
    aliases: dict[str, int]
    version: FunctionVersionRead | None = Field(
        default=None, description="the newest version (building, ready or failed)"
    )
    warm: int = Field(default=0, description="running VMs of this function on this manager")
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


class FunctionPage(Page[FunctionRead]):
    """A page of functions."""


class FunctionVersionPage(Page[FunctionVersionRead]):
    """A page of versions, newest first."""


class AliasSet(BaseModel):
    """``PUT /v1/functions/{id}/aliases/{alias}``: point an alias at a ready version."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)


class InvokeRequest(BaseModel):
    """``POST /v1/functions/{id}/invoke``. ``event`` is any JSON value (at most 256 KiB)."""

    model_config = ConfigDict(extra="forbid")
    event: Any = None


class InvocationError(BaseModel):
    """What went wrong: the exception in the handler with its traceback from the guest,
    ``Timeout``, ``ResultTooLarge`` or ``RuntimeError`` (the runtime failed)."""

    type: str
    message: str
    traceback: str = ""


class InvocationRead(BaseModel):
    """One invocation. ``status``: queued, running, succeeded, error (the handler raised),
    timed_out (killed; its VM replaced) or failed (no VM could run it)."""

    id: str
    function_id: str
    version: int | None
    mode: Literal["sync", "async"]
    status: str
    result: Any = None
    error: InvocationError | None = None
    cold_start: bool
    start_ms: int | None = Field(default=None, description="VM start (restore) time when cold")
    duration_ms: int | None
    logs_tail: str = Field(default="", description="the last 4 KiB of the handler's output")
    created_at: datetime
    finished_at: datetime | None


class InvocationPage(Page[InvocationRead]):
    """A page of invocations, newest first."""


class InvocationLogs(BaseModel):
    """An invocation's captured stdout/stderr (at most 64 KiB)."""

    id: str
    logs: str
