"""Functions: serverless handlers in microVMs, started from a memory snapshot.

* **Versions.** Creating a function, and every change of its code or runtime settings,
  makes a new immutable :class:`FunctionVersion` and a ``function.deploy`` operation that
  builds it: boot a VM from the default image, import the handler in the guest's runner,
  take a memory snapshot at "ready to handle", delete the build VM. Aliases map names to
  versions; ``latest`` follows the newest ready version.
* **Invocations** resolve an alias (or a version) when they start and keep that version to
  the end, so an invocation in flight finishes on the old version while the next one takes
  the new. A cold start restores the version's snapshot as a new VM (its own identity,
  entropy and clock: the snapshots feature's clone uniqueness); warm VMs are reused, one
  invocation at a time each (see ``pool``).
* **Failures.** An exception in the handler is a structured error with the guest's
  traceback (status ``error``, HTTP 200); a handler past ``timeout_s`` is killed with its VM,
  which is replaced (``timed_out``); an oversize event or result is refused (413).

RBAC: owner (operator) or admin; others get 404 for what they may not see. Every mutating
call (create, update, delete, alias, invoke) is audited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import time
import zipfile
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Problem,
    RateLimited,
    UpstreamError,
    ValidationFailed,
)
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError
from nexus.manager.features.audit import service as audit
from nexus.manager.features.functions import pool as pools
from nexus.manager.features.functions import runtime
from nexus.manager.features.functions.models import (
    Function,
    FunctionInvocation,
    FunctionVersion,
)
from nexus.manager.features.functions.schemas import (
    MAX_CODE_BYTES,
    FunctionCode,
    FunctionCreate,
    FunctionRead,
    FunctionUpdate,
    FunctionVersionRead,
    InvocationRead,
)
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.users.models import User
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform import metrics as prom
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)

MAX_EVENT_BYTES = 256 * 1024
MAX_RESULT_BYTES = 1024 * 1024
MAX_LOG_BYTES = 64 * 1024
LOG_TAIL = 4096
REAP_INTERVAL_S = 2.0
VERSIONED = ("runtime", "code", "handler", "env", "memory_mib", "timeout_s")
SCALING = ("description", "concurrency", "min_warm", "max_instances", "max_queue", "idle_s")

INVOCATIONS = Counter(
    "nexus_function_invocations",
    "Function invocations that ended, by outcome and whether they started a VM",
    ["outcome", "cold"],
    registry=prom.REGISTRY,
)
INVOKE_DURATION = Histogram(
    "nexus_function_invocation_duration_seconds",
    "Function invocation latency in the manager (slot wait, VM start when cold, the call)",
    ["cold"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0),
    registry=prom.REGISTRY,
)
COLD_STARTS = Histogram(
    "nexus_function_cold_start_seconds",
    "Time to start a function VM from its ready snapshot",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=prom.REGISTRY,
)
REJECTED = Counter(
    "nexus_function_rejected",
    "Function invocations refused because the queue was full (429)",
    registry=prom.REGISTRY,
)
WARM = Gauge(
    "nexus_function_instances",
    "Function VMs running on this manager",
    registry=prom.REGISTRY,
)


def view(f: Function) -> dict[str, Any]:
    """Audit view of a function."""
    return {
        "name": f.name,
        "concurrency": f.concurrency,
        "min_warm": f.min_warm,
        "max_instances": f.max_instances,
        "max_queue": f.max_queue,
        "idle_s": f.idle_s,
        "latest_version": f.latest_version,
        "aliases": dict(f.aliases),
    }


def version_view(v: FunctionVersion) -> dict[str, Any]:
    """Audit view of a version (the code by its hash, env by its keys)."""
    return {
        "version": v.version,
        "runtime": v.runtime,
        "handler": v.handler,
        "code_sha256": v.code_sha256,
        "env_keys": sorted(v.env),
        "memory_mib": v.memory_mib,
        "timeout_s": v.timeout_s,
    }


# --- reads --------------------------------------------------------------------------------


async def get_function(
    *, db_session: AsyncSession, principal: Principal, function_id: str
) -> Function:
    """A function the caller may see, by id or name (404 otherwise)."""
    fn = await db_session.get(Function, function_id)
    if fn is None and not function_id.startswith("fn_"):
        q = select(Function).where(Function.name == function_id)
        if not principal.is_admin:
            q = q.where(Function.created_by_user_id == principal.user_id)
        fn = (await db_session.execute(q.limit(2))).scalars().first()
    return ensure_visible(principal, fn, "function", function_id)


async def _version(s: AsyncSession, fn: Function, number: int) -> FunctionVersion | None:
    q = select(FunctionVersion).where(
        FunctionVersion.function_id == fn.id, FunctionVersion.version == number
    )
    return (await s.execute(q)).scalars().first()


async def read(s: AsyncSession, state: ManagerState, fn: Function) -> FunctionRead:
    """The API view of a function with its newest version and warm count."""
    out = FunctionRead.model_validate(fn)
    v = await _version(s, fn, fn.latest_version)
    out.version = FunctionVersionRead.model_validate(v) if v else None
    p = pools.pools(state).get(fn.id)
    out.warm = len(p.instances) if p else 0
    return out


async def list_functions(
    *, db_session: AsyncSession, principal: Principal, limit: int = 50, offset: int = 0
) -> tuple[list[Function], int]:
    """Functions the caller may see (admin: all), newest first."""
    q = select(Function)
    if not principal.is_admin:
        q = q.where(Function.created_by_user_id == principal.user_id)
    total = (await db_session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = await db_session.execute(q.order_by(Function.id.desc()).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


async def list_versions(
    *, db_session: AsyncSession, principal: Principal, function_id: str, limit: int, offset: int
) -> tuple[list[FunctionVersion], int]:
    """A function's versions, newest first."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    cond = FunctionVersion.function_id == fn.id
    total = (
        await db_session.execute(select(func.count(FunctionVersion.id)).where(cond))
    ).scalar_one()
    rows = await db_session.execute(
        select(FunctionVersion)
        .where(cond)
        .order_by(FunctionVersion.version.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars()), int(total)


# --- create / update / delete --------------------------------------------------------------


def _bundle(code: FunctionCode, handler: str) -> tuple[str, str, str]:
    """(kind, stored code, sha256) of the request's code; 422/413 when it is unusable."""
    if (code.source is None) == (code.zip_base64 is None):
        raise ValidationFailed("code: give exactly one of 'source' and 'zip_base64'")
    if code.source is not None:
        data = code.source.encode()
        if len(data) > MAX_CODE_BYTES:
            raise PayloadTooLarge(f"code.source is {len(data)} bytes; at most {MAX_CODE_BYTES}")
        try:
            compile(code.source, f"{handler.rpartition('.')[0]}.py", "exec")
        except SyntaxError as exc:
            raise ValidationFailed(f"code.source: {exc.msg} (line {exc.lineno})") from exc
        return "inline", code.source, hashlib.sha256(data).hexdigest()
    try:
        raw = base64.b64decode(code.zip_base64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed("code.zip_base64 is not valid base64") from exc
    if len(raw) > MAX_CODE_BYTES:
        raise PayloadTooLarge(f"the code zip is {len(raw)} bytes; at most {MAX_CODE_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            unpacked = sum(i.file_size for i in infos)
            bad = [i.filename for i in infos if i.filename.startswith("/") or ".." in i.filename]
    except zipfile.BadZipFile as exc:
        raise ValidationFailed("code.zip_base64 is not a zip file") from exc
    if bad:
        raise ValidationFailed(f"code zip: unsafe member name '{bad[0][:100]}'")
    if unpacked > 16 * MAX_CODE_BYTES or len(infos) > 2000:
        raise PayloadTooLarge("the code zip unpacks to more than 8 MiB or 2000 files")
    return "zip", code.zip_base64 or "", hashlib.sha256(raw).hexdigest()


def guest_bundle(v: FunctionVersion) -> dict[str, Any]:
    """What the runner's setup reads: the code, handler, env and the result cap."""
    out: dict[str, Any] = {
        "handler": v.handler,
        "env": dict(v.env),
        "max_result": MAX_RESULT_BYTES,
    }
    if v.code_kind == "inline":
        out["files"] = {v.handler.rpartition(".")[0].replace(".", "/") + ".py": v.code}
    else:
        out["zip_b64"] = v.code
    return out


async def _new_version(
    s: AsyncSession,
    state: ManagerState,
    principal: Principal,
    fn: Function,
    base: FunctionVersion | None,
    changes: dict[str, Any],
    code: FunctionCode | None,
) -> tuple[FunctionVersion, Operation]:
    """Add version ``latest_version + 1`` and start the operation that builds it."""
    handler = changes.get("handler") or (base.handler if base else "main.handler")
    if code is not None:
        kind, stored, sha = _bundle(code, handler)
    elif base is not None:
        kind, stored, sha = base.code_kind, base.code, base.code_sha256
    else:
        raise ValidationFailed("code is required")
    fn.latest_version += 1

    def pick(key: str, default: Any) -> Any:
        if key in changes:
            return changes[key]
        return getattr(base, key) if base is not None else default

    v = FunctionVersion(
        id=new_id("fnv"),
        function_id=fn.id,
        version=fn.latest_version,
        runtime=pick("runtime", "python3.11"),
        handler=handler,
        code_kind=kind,
        code=stored,
        code_sha256=sha,
        env=pick("env", {}),
        memory_mib=pick("memory_mib", 256),
        timeout_s=pick("timeout_s", 30),
        state="building",
        created_by_user_id=fn.created_by_user_id,
    )
    s.add(v)
    op = operations.create(
        s, principal=principal, kind="function.deploy", resource_type="function", resource_id=fn.id
    )
    v.operation_id = op.id
    await s.flush()
    return v, op


def _start_build(
    state: ManagerState, fn_id: str, owner_id: str, v: FunctionVersion, op_id: str
) -> None:
    version_id, number, bundle, memory = v.id, v.version, guest_bundle(v), v.memory_mib

    async def work(progress: operations.Progress) -> dict[str, Any]:
        await progress(10, "booting a VM, importing the handler, taking the ready snapshot")
        owner = await owner_principal(state, owner_id)
        if owner is None:
            raise Conflict("the function's owner is gone or disabled")
        try:
            built = await runtime.backend(state).build(state, owner, fn_id, bundle, memory, number)
        except (runtime.BuildFailed, Problem, AgentError) as exc:
            reason = getattr(exc, "detail", None) or str(exc)
            async with state.db.session() as s:
                row = await s.get(FunctionVersion, version_id)
                if row is not None:
                    row.state, row.state_reason = "failed", reason[:8000]
            raise Conflict(f"version {number} failed: {reason[:2000]}") from exc
        async with state.db.session() as s:
            row = await s.get(FunctionVersion, version_id)
            fn = await s.get(Function, fn_id)
            if row is None or fn is None:  # deleted while building
                await runtime.backend(state).drop_snapshot(state, owner, built.snapshot_id)
                return {"deleted": True}
            row.state, row.snapshot_id = "ready", built.snapshot_id
            row.boot_ready_ms, row.build_ms = built.boot_ready_ms, built.build_ms
            aliases = dict(fn.aliases)
            if number > int(aliases.get("latest", 0)):
                aliases["latest"] = number
                fn.aliases = aliases
        return {
            "function_id": fn_id,
            "version": number,
            "snapshot_id": built.snapshot_id,
            "boot_ready_ms": built.boot_ready_ms,
            "build_ms": built.build_ms,
        }

    operations.start(state, op_id, work, kind="function.deploy", context={"function_id": fn_id})


async def create_function(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: FunctionCreate
) -> tuple[Function, Operation]:
    """Create a function and start building its first version."""
    ensure_can_create(principal, "function.create", "function")
    if body.min_warm > body.max_instances:
        raise ValidationFailed("min_warm must not exceed max_instances")
    fn = Function(
        id=new_id("fn"),
        name=body.name,
        description=body.description,
        concurrency=body.concurrency,
        min_warm=body.min_warm,
        max_instances=body.max_instances,
        max_queue=body.max_queue,
        idle_s=body.idle_s,
        latest_version=0,
        aliases={},
        created_by_user_id=principal.user_id,
    )
    db_session.add(fn)
    await flush_unique(db_session, f"you already have a function named '{body.name}'")
    changes = body.model_dump(include=set(VERSIONED) - {"code"})
    v, op = await _new_version(db_session, state, principal, fn, None, changes, body.code)
    audit.record(
        db_session,
        actor=principal,
        action="function.create",
        resource_type="function",
        resource_id=fn.id,
        after={**view(fn), **version_view(v)},
    )
    await db_session.commit()
    _start_build(state, fn.id, fn.created_by_user_id, v, op.id)
    return fn, op


async def update_function(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    function_id: str,
    body: FunctionUpdate,
) -> tuple[Function, Operation | None]:
    """Change scaling settings in place; a change of code or runtime settings builds a new
    version (returned operation)."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    ensure_can_modify(principal, fn, "function", "function.update")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    before = view(fn)
    for k in SCALING:
        if k in changes:
            setattr(fn, k, changes[k])
    if fn.min_warm > fn.max_instances:
        raise ValidationFailed("min_warm must not exceed max_instances")
    op = None
    after: dict[str, Any] = {}
    if set(VERSIONED) & set(changes):
        base = await _version(db_session, fn, fn.latest_version)
        vchanges = {k: v for k, v in changes.items() if k in VERSIONED and k != "code"}
        v, op = await _new_version(db_session, state, principal, fn, base, vchanges, body.code)
        after = version_view(v)
    audit.record(
        db_session,
        actor=principal,
        action="function.update",
        resource_type="function",
        resource_id=fn.id,
        before=before,
        after={**view(fn), **after},
    )
    await db_session.commit()
    if op is not None:
        _start_build(state, fn.id, fn.created_by_user_id, v, op.id)
    return fn, op


async def set_alias(
    *, db_session: AsyncSession, principal: Principal, function_id: str, alias: str, version: int
) -> Function:
    """Point ``alias`` at a ready version (``latest`` moves by itself, but may be set)."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    ensure_can_modify(principal, fn, "function", "function.alias")
    v = await _version(db_session, fn, version)
    if v is None:
        raise NotFound(f"function '{fn.name}' has no version {version}")
    if v.state != "ready":
        raise Conflict(f"version {version} is {v.state}; an alias needs a ready version")
    if alias not in fn.aliases and len(fn.aliases) >= 32:
        raise ValidationFailed("at most 32 aliases")
    before = dict(fn.aliases)
    fn.aliases = {**fn.aliases, alias: version}
    audit.record(
        db_session,
        actor=principal,
        action="function.alias",
        resource_type="function",
        resource_id=fn.id,
        before={"aliases": before},
        after={"aliases": fn.aliases},
    )
    return fn


async def delete_alias(
    *, db_session: AsyncSession, principal: Principal, function_id: str, alias: str
) -> Function:
    """Remove a named alias (not ``latest``)."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    ensure_can_modify(principal, fn, "function", "function.alias")
    if alias == "latest":
        raise BadRequest("'latest' always follows the newest ready version")
    if alias not in fn.aliases:
        raise NotFound(f"function '{fn.name}' has no alias '{alias}'")
    before = dict(fn.aliases)
    fn.aliases = {k: v for k, v in fn.aliases.items() if k != alias}
    audit.record(
        db_session,
        actor=principal,
        action="function.alias",
        resource_type="function",
        resource_id=fn.id,
        before={"aliases": before},
        after={"aliases": fn.aliases},
    )
    return fn


async def delete_function(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, function_id: str
) -> None:
    """Delete a function: its VMs, snapshots, versions and invocation records."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    ensure_can_modify(principal, fn, "function", "function.delete")
    snaps = list(
        (
            await db_session.execute(
                select(FunctionVersion.snapshot_id).where(
                    FunctionVersion.function_id == fn.id, FunctionVersion.snapshot_id.is_not(None)
                )
            )
        ).scalars()
    )
    audit.record(
        db_session,
        actor=principal,
        action="function.delete",
        resource_type="function",
        resource_id=fn.id,
        before=view(fn),
    )
    fn_id, owner_id = fn.id, fn.created_by_user_id
    await db_session.delete(fn)
    await db_session.commit()
    p = pools.pools(state).pop(fn_id, None)
    idle: list[runtime.Instance] = []
    if p is not None:
        p.closed = True
        idle = [i for i in p.instances if not i.busy]
        for i in idle:
            p.instances.remove(i)

    async def tidy() -> None:
        owner = await owner_principal(state, owner_id)
        if owner is None:
            return
        be = runtime.backend(state)
        for inst in idle:
            await be.destroy(state, owner, inst.vm_id)
        for snap_id in snaps:
            if snap_id:
                await be.drop_snapshot(state, owner, snap_id)
        _set_warm(state)

    state.spawn(tidy(), name=f"function-delete:{fn_id}")


# --- invocations ---------------------------------------------------------------------------


async def owner_principal(state: ManagerState, user_id: str) -> Principal | None:
    """The principal a function's VMs are made as: its owner (None if gone or disabled)."""
    async with state.db.session() as s:
        user = await s.get(User, user_id)
        if user is None or user.disabled:
            return None
        return Principal(user_id=user.id, username=user.username, role=user.role)  # type: ignore[arg-type]


def _set_warm(state: ManagerState) -> None:
    WARM.set(sum(len(p.instances) for p in pools.pools(state).values()))


async def resolve(
    s: AsyncSession, fn: Function, *, version: int | None, alias: str | None
) -> FunctionVersion:
    """The ready version an invocation runs: ``version``, else ``alias`` (default latest)."""
    if version is None:
        name = alias or "latest"
        if name not in fn.aliases:
            if name == "latest":
                raise Conflict(f"function '{fn.name}' has no ready version yet")
            raise NotFound(f"function '{fn.name}' has no alias '{name}'")
        version = int(fn.aliases[name])
    v = await _version(s, fn, version)
    if v is None:
        raise NotFound(f"function '{fn.name}' has no version {version}")
    if v.state != "ready" or not v.snapshot_id:
        raise Conflict(f"version {version} of function '{fn.name}' is {v.state}")
    return v


def event_bytes(event: Any) -> int:
    """The event's JSON size; 413 above ``MAX_EVENT_BYTES``."""
    size = len(json.dumps(event, separators=(",", ":")).encode())
    if size > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"the event is {size} bytes of JSON; at most {MAX_EVENT_BYTES} bytes")
    return size


class Outcome:
    """What one invocation came to (before it is recorded)."""

    def __init__(self) -> None:
        self.status = "failed"
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.logs = ""
        self.cold = False
        self.start_ms: int | None = None
        self.duration_ms = 0
        self.vm_id: str | None = None
        self.too_large = False


def _error(kind: str, message: str, tb: str = "") -> dict[str, Any]:
    return {"type": kind[:100], "message": message[:2000], "traceback": tb[-16384:]}


def _interpret(out: Outcome, res: runtime.CallResult, timeout_s: int) -> bool:
    """Fill ``out`` from the guest's (untrusted) answer; False when the VM must go."""
    if res.timed_out:
        out.status = "timed_out"
        out.error = _error("Timeout", f"the handler ran longer than timeout_s={timeout_s}")
        return False
    answer = runtime.parse_answer(res.stdout) if not res.truncated else {}
    logs = answer.get("logs")
    out.logs = logs[-MAX_LOG_BYTES:] if isinstance(logs, str) else ""
    if res.exit_code != 0 or not answer or not isinstance(answer.get("ok"), bool):
        out.status = "failed"
        out.error = _error("RuntimeError", "the function runtime did not answer properly")
        return False
    if answer["ok"]:
        body = answer.get("result_json")
        if not isinstance(body, str):
            out.error = _error("RuntimeError", "the function runtime did not answer properly")
            return False
        if len(body) > MAX_RESULT_BYTES:
            out.status, out.too_large = "error", True
            out.error = _error(
                "ResultTooLarge", f"the result is {len(body)} bytes; at most {MAX_RESULT_BYTES}"
            )
            return True
        try:
            out.result = json.loads(body)
        except ValueError:
            out.error = _error("RuntimeError", "the handler's result is not JSON")
            return False
        out.status = "succeeded"
        return True
    err = answer.get("error")
    err = err if isinstance(err, dict) else {}
    out.status = "error"
    out.error = _error(
        str(err.get("type") or "Error"),
        str(err.get("message") or ""),
        str(err.get("traceback") or ""),
    )
    out.too_large = out.error["type"] == "ResultTooLarge"
    return True


async def execute(
    state: ManagerState,
    fn_id: str,
    owner_id: str,
    limits: dict[str, int],
    v: FunctionVersion,
    event: Any,
    owner: Principal | None = None,
) -> Outcome:
    """Run one invocation on ``v`` through the function's pool (waits for a slot)."""
    out = Outcome()
    owner = owner or await owner_principal(state, owner_id)
    if owner is None:
        out.error = _error("RuntimeError", "the function's owner is gone or disabled")
        return out
    p = await pools.get_pool(state, fn_id, owner, **limits)
    try:
        await p.enter()
    except Problem:
        REJECTED.inc()
        raise
    began = time.monotonic()
    be = runtime.backend(state)
    try:
        inst, evict = p.checkout(v.version)
        for old in evict:
            state.spawn(be.destroy(state, owner, old.vm_id), name="function-evict")
        if inst is None:
            out.cold = True
            t0 = time.monotonic()
            try:
                inst = await be.start(state, owner, fn_id, str(v.snapshot_id), v.version)
            except Exception as exc:
                p.start_failed()
                detail = getattr(exc, "detail", None) or str(exc)
                out.error = _error("RuntimeError", f"no VM could be started: {detail}")
                return out
            COLD_STARTS.observe(time.monotonic() - t0)
            out.start_ms = inst.start_ms or int((time.monotonic() - t0) * 1000)
            p.add_started(inst)
            _set_warm(state)
        out.vm_id = inst.vm_id
        request = json.dumps({"event": event, "instance": inst.vm_id}).encode()
        cap = MAX_RESULT_BYTES + 2 * MAX_LOG_BYTES + 64 * 1024
        try:
            res = await be.call(state, inst, request, float(v.timeout_s), cap)
            keep = _interpret(out, res, v.timeout_s)
        except (AgentError, Problem) as exc:
            out.status = "failed"
            out.error = _error("RuntimeError", f"the call failed: {getattr(exc, 'detail', exc)}")
            keep = False
        if not keep:
            inst.broken = True
        if not p.release(inst):
            state.spawn(be.destroy(state, owner, inst.vm_id), name="function-replace")
            _set_warm(state)
    finally:
        await p.leave()
        out.duration_ms = int((time.monotonic() - began) * 1000)
        cold = "true" if out.cold else "false"
        INVOCATIONS.labels(out.status, cold).inc()
        INVOKE_DURATION.labels(cold).observe(time.monotonic() - began)
    return out


def invocation_read(row: FunctionInvocation) -> InvocationRead:
    """The API view of an invocation record."""
    return InvocationRead(
        id=row.id,
        function_id=row.function_id,
        version=row.version,
        mode=row.mode,  # type: ignore[arg-type]
        status=row.status,
        result=row.result,
        error=row.error,  # type: ignore[arg-type]
        cold_start=row.cold_start,
        start_ms=row.start_ms,
        duration_ms=row.duration_ms,
        logs_tail=row.logs[-LOG_TAIL:],
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def _limits(fn: Function) -> dict[str, int]:
    return {
        "concurrency": fn.concurrency,
        "max_instances": fn.max_instances,
        "max_queue": fn.max_queue,
    }


def _apply(row: FunctionInvocation, out: Outcome) -> None:
    row.status, row.result, row.error = out.status, out.result, out.error
    row.logs, row.cold_start, row.start_ms = out.logs, out.cold, out.start_ms
    row.duration_ms, row.vm_id, row.finished_at = out.duration_ms, out.vm_id, utcnow()


async def invoke(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    function_id: str,
    event: Any,
    version: int | None = None,
    alias: str | None = None,
    asynchronous: bool = False,
) -> InvocationRead:
    """Invoke a function: wait for the outcome, or (``asynchronous``) return the queued
    invocation at once (its outcome at ``GET .../invocations/{id}``)."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    ensure_can_modify(principal, fn, "function", "function.invoke")
    size = event_bytes(event)
    v = await resolve(db_session, fn, version=version, alias=alias)
    fn_id, owner_id, limits, number = fn.id, fn.created_by_user_id, _limits(fn), v.version
    row = FunctionInvocation(
        id=new_id("inv"),
        function_id=fn_id,
        version=number,
        mode="async" if asynchronous else "sync",
        status="queued",
        event_bytes=size,
        created_by_user_id=principal.user_id,
        created_at=utcnow(),
    )
    audit.record(
        db_session,
        actor=principal,
        action="function.invoke",
        resource_type="function",
        resource_id=fn_id,
        after={"invocation_id": row.id, "version": number, "mode": row.mode, "event_bytes": size},
    )
    db_session.expunge(v)
    if asynchronous:
        p = await pools.get_pool(state, fn_id, principal, **limits)
        if p.sem.locked() and p.waiting >= p.max_queue:
            REJECTED.inc()
            raise RateLimited(
                f"function '{fn.name}' is at its concurrency limit and its queue is full",
                headers={"Retry-After": "1"},
            )
        db_session.add(row)
        await db_session.commit()
        inv_id = row.id

        async def run() -> None:
            async with state.db.session() as s:
                r = await s.get(FunctionInvocation, inv_id)
                if r is not None:
                    r.status = "running"
            try:
                out = await execute(state, fn_id, owner_id, limits, v, event)
            except Problem as exc:
                out = Outcome()
                out.error = _error("Rejected", exc.detail)
            async with state.db.session() as s:
                r = await s.get(FunctionInvocation, inv_id)
                if r is not None:
                    _apply(r, out)

        state.spawn(run(), name=f"function-invoke:{inv_id}")
        return invocation_read(row)
    await db_session.commit()  # the audit row: not held open during the call
    out = await execute(state, fn_id, owner_id, limits, v, event)
    _apply(row, out)
    db_session.add(row)
    await db_session.commit()
    if out.too_large:
        raise PayloadTooLarge(
            (out.error or {}).get("message", "the result is too large"),
            extra={"invocation_id": row.id},
        )
    if out.status == "failed":
        raise UpstreamError(
            f"the invocation failed: {(out.error or {}).get('message', '')}",
            extra={"invocation_id": row.id},
        )
    return invocation_read(row)


async def get_invocation(
    *, db_session: AsyncSession, principal: Principal, function_id: str, invocation_id: str
) -> FunctionInvocation:
    """An invocation of a function the caller may see."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    row = await db_session.get(FunctionInvocation, invocation_id)
    if row is None or row.function_id != fn.id:
        raise NotFound(f"invocation '{invocation_id}' not found")
    return row


async def list_invocations(
    *,
    db_session: AsyncSession,
    principal: Principal,
    function_id: str,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[FunctionInvocation], int]:
    """A function's invocations, newest first."""
    fn = await get_function(db_session=db_session, principal=principal, function_id=function_id)
    conds: list[Any] = [FunctionInvocation.function_id == fn.id]
    if status:
        conds.append(FunctionInvocation.status == status)
    total = (
        await db_session.execute(select(func.count(FunctionInvocation.id)).where(*conds))
    ).scalar_one()
    rows = await db_session.execute(
        select(FunctionInvocation)
        .where(*conds)
        .order_by(FunctionInvocation.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars()), int(total)


# --- the pool keeper -----------------------------------------------------------------------


async def keep_pools(state: ManagerState, now: float | None = None) -> dict[str, int]:
    """One pass: stop idle VMs of versions no alias points at, and those idle past
    ``idle_s`` beyond ``min_warm``; start VMs up to ``min_warm`` of the ``latest`` version."""
    now = time.monotonic() if now is None else now
    stopped = started = 0
    async with state.db.session() as s:
        fns = {
            f.id: f
            for f in (
                await s.execute(
                    select(Function).where(
                        (Function.min_warm > 0) | Function.id.in_(list(pools.pools(state)))
                    )
                )
            ).scalars()
        }
        ready = {}
        for f in fns.values():
            latest = f.aliases.get("latest")
            v = await _version(s, f, int(latest)) if latest else None
            if v is not None and v.state == "ready" and v.snapshot_id:
                ready[f.id] = (v.version, v.snapshot_id)
            s.expunge(f)
    be = runtime.backend(state)
    for fn_id, p in list(pools.pools(state).items()):
        found = fns.get(fn_id)
        if found is None:
            p.closed = True
            pools.pools(state).pop(fn_id, None)
            for inst in p.idle():
                p.instances.remove(inst)
                await be.destroy(state, p.owner, inst.vm_id)
                stopped += 1
            continue
        current = ready.get(fn_id, (None, None))[0]
        aliased = {int(n) for n in found.aliases.values()}  # versions an alias points at
        keep_n, idle_s = found.min_warm, found.idle_s
        for inst in sorted(p.idle(), key=lambda i: i.last_used, reverse=True):
            if inst.version == current and keep_n > 0:
                keep_n -= 1
                continue
            if inst.version not in aliased or now - inst.last_used >= idle_s:
                p.instances.remove(inst)
                await be.destroy(state, p.owner, inst.vm_id)
                stopped += 1
    for fn_id, f in fns.items():
        if f.min_warm <= 0 or fn_id not in ready:
            continue
        number, snap_id = ready[fn_id]
        owner = await owner_principal(state, f.created_by_user_id)
        if owner is None:
            continue
        p = await pools.get_pool(state, fn_id, owner, **_limits(f))
        have = sum(1 for i in p.instances if i.version == number) + p.starting
        room = p.max_instances - len(p.instances) - p.starting
        for _ in range(max(0, min(f.min_warm - have, room))):
            p.starting += 1
            try:
                inst = await be.start(state, owner, fn_id, snap_id, number)
            except Exception as exc:
                log.warning("function.warm_failed", function_id=fn_id, error=str(exc))
                p.starting -= 1
                break
            p.starting -= 1
            inst.last_used = time.monotonic()
            p.instances.append(inst)
            started += 1
    _set_warm(state)
    return {"stopped": stopped, "started": started}


async def cleanup_leftovers(state: ManagerState) -> int:
    """Delete function VMs a previous manager process left (pools live in memory)."""
    n = 0
    async with state.db.session() as s:
        rows = (await s.execute(select(Vm).where(Vm.name.like("fn-%")))).scalars().all()
        owners = dict((await s.execute(select(Function.id, Function.created_by_user_id))).all())
        # only VMs of a function of the same owner (a label alone is anyone's to set)
        gone = [
            (v.id, v.created_by_user_id)
            for v in rows
            if owners.get(str(v.labels.get(runtime.LABEL))) == v.created_by_user_id
        ]
    for vm_id, owner_id in gone:
        owner = await owner_principal(state, owner_id)
        if owner is not None:
            await runtime.backend(state).destroy(state, owner, vm_id)
            n += 1
    return n


async def run_keeper(state: ManagerState) -> None:
    """The pool keeper loop of this manager process."""
    try:
        await cleanup_leftovers(state)
    except Exception:
        log.exception("function.cleanup_error")
    while True:
        await asyncio.sleep(REAP_INTERVAL_S)
        try:
            await keep_pools(state)
        except Exception:
            log.exception("function.keeper_error")


async def start(state: ManagerState) -> None:
    """Start-up hook: the pool keeper."""
    state.spawn(run_keeper(state), name="function-keeper")
