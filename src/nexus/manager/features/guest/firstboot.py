"""First boot: the SSH keys and user data a VM was created with, applied once through the
guest agent (issue 20).

A leader loop (lease ``guest-first-boot``, every 2 s) picks the VMs whose first boot is
pending (``first_boot`` set, ``first_boot_done_at`` null), running, with a ready guest on a
healthy host, and for each runs three commands in the guest over the guest channel:

1. the keys are appended to ``/root/.ssh/authorized_keys`` (dir 0700, file 0600), each only
   if the file does not hold it yet;
2. the user data is written to ``/var/lib/nexus/user-data`` (0600);
3. the marker ``/var/lib/nexus/first-boot.done`` is created with ``O_EXCL`` (shell
   ``set -C``) and, only when that succeeded and the user data starts with ``#!``, the
   script is made executable (0700) and run as root; its output goes to
   ``/var/lib/nexus/user-data.log`` and its last bytes come back to the manager.

Steps 1 and 2 are idempotent, and the marker in the guest makes step 3 run at most once:
a manager that restarts (or a second replica that takes the lease) before it records the
outcome applies the keys again, harmlessly, and never runs the script twice. The outcome is
``first_boot_done_at``, ``first_boot_error`` (a non-zero exit, a timeout) and an audit row
``vm.first_boot``. A failure never fails the VM. When the guest cannot be reached the VM
stays pending and is tried again on the next tick (the reason is kept in
``first_boot_error``).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from sqlalchemy import select

from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.models import AgentExecRequest, AgentExecResult
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState

log = get_logger(__name__)
LEASE = "guest-first-boot"
INTERVAL_S = 2.0
SCRIPT_TIMEOUT_S = 600.0
OUTPUT_TAIL = 2000
MARKER = "/var/lib/nexus/first-boot.done"
USER_DATA = "/var/lib/nexus/user-data"

_KEYS_SH = """set -e
umask 077
mkdir -p /root/.ssh
chmod 0700 /root/.ssh
f=/root/.ssh/authorized_keys
touch "$f"
chmod 0600 "$f"
if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f"; fi
while IFS= read -r k; do
  [ -n "$k" ] || continue
  grep -qxF -- "$k" "$f" || printf '%s\\n' "$k" >> "$f"
done
"""

_USER_DATA_SH = f"""set -e
umask 077
mkdir -p /var/lib/nexus
cat > {USER_DATA}.tmp
chmod 0600 {USER_DATA}.tmp
mv -f {USER_DATA}.tmp {USER_DATA}
"""

_RUN_SH = f"""umask 077
mkdir -p /var/lib/nexus
if ! (set -C; date -u > {MARKER}) 2>/dev/null; then
  echo "first boot already done ($(cat {MARKER}))"
  exit 0
fi
[ "$1" = run ] || exit 0
chmod 0700 {USER_DATA}
{USER_DATA} > {USER_DATA}.log 2>&1 < /dev/null
rc=$?
tail -c {OUTPUT_TAIL} {USER_DATA}.log
exit $rc
"""


def is_script(user_data: str | None) -> bool:
    """User data is run once as root when it starts with ``#!``."""
    return user_data is not None and user_data.startswith("#!")


async def _sh(
    state: ManagerState,
    host: Host,
    vm_id: str,
    script: str,
    *args: str,
    stdin: bytes = b"",
    timeout_s: float = 60.0,
) -> AgentExecResult:
    req = AgentExecRequest(
        argv=["/bin/sh", "-c", script, "nexus-first-boot", *args],
        stdin_b64=base64.b64encode(stdin).decode(),
        timeout_s=timeout_s,
        max_output=64 * 1024,
    )
    return await hosts.agent_client(state, host).exec_vm(vm_id, req)


def _text(res: AgentExecResult) -> str:
    raw = base64.b64decode(res.stdout_b64) + base64.b64decode(res.stderr_b64)
    return raw.decode("utf-8", errors="replace")[-OUTPUT_TAIL:]


def _failed(step: str, res: AgentExecResult) -> str | None:
    if res.timed_out:
        return f"{step}: timed out"
    if res.exit_code != 0:
        return f"{step}: exit code {res.exit_code}: {_text(res).strip()[-300:]}"
    return None


async def apply(state: ManagerState, vm_id: str, host: Host, spec: dict[str, Any]) -> None:
    """Apply one VM's first boot and record the outcome (see the module's docstring)."""
    keys: list[str] = list(spec.get("ssh_keys") or [])
    user_data: str | None = spec.get("user_data")
    outcome: dict[str, Any] = {"ssh_keys": len(keys), "user_data": user_data is not None}
    error: str | None = None
    try:
        if keys:
            res = await _sh(state, host, vm_id, _KEYS_SH, stdin="\n".join(keys).encode() + b"\n")
            error = _failed("ssh keys", res)
        if error is None and user_data is not None:
            res = await _sh(state, host, vm_id, _USER_DATA_SH, stdin=user_data.encode())
            error = _failed("user data", res)
        if error is None:
            run = is_script(user_data)
            res = await _sh(
                state,
                host,
                vm_id,
                _RUN_SH,
                "run" if run else "write",
                timeout_s=SCRIPT_TIMEOUT_S if run else 60.0,
            )
            if run:
                outcome.update(
                    script_exit_code=res.exit_code,
                    script_timed_out=res.timed_out,
                    output_tail=_text(res)[-500:],
                )
            error = _failed("user-data script", res)
    except (AgentError, TimeoutError, OSError) as exc:
        # the guest is not reachable (yet): stays pending, tried again on the next tick
        log.info("first_boot.unreachable", vm_id=vm_id, error=str(exc))
        reason = f"guest not reachable: {exc}"[:1000]
        async with state.db.session() as s:
            vm = await s.get(Vm, vm_id)
            if vm is not None and vm.first_boot_error != reason:  # no write every tick
                vm.first_boot_error = reason
        return
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None or vm.first_boot_done_at is not None:
            return
        vm.first_boot_done_at = utcnow()
        vm.first_boot_error = error[:1000] if error else None
        audit.record(
            s,
            actor=None,
            action="vm.first_boot",
            resource_type="vm",
            resource_id=vm_id,
            after=outcome,
            outcome="failure" if error else "success",
            detail=error,
        )
    log.info("first_boot.done", vm_id=vm_id, error=error)


async def apply_pending(state: ManagerState) -> int:
    """One tick: apply every pending first boot whose guest is ready (concurrently)."""
    async with state.db.session() as s:
        rows = list(
            (
                await s.execute(
                    select(Vm.id, Vm.first_boot_spec, Host)
                    .join(Host, Host.id == Vm.host_id)
                    .where(
                        Vm.first_boot_spec.is_not(None),
                        Vm.first_boot_done_at.is_(None),
                        Vm.state == "running",
                        Vm.ready_at.is_not(None),
                    )
                )
            ).all()
        )
    timeout = state.settings.host_heartbeat_timeout_s
    todo = [(i, h, spec) for i, spec, h in rows if spec and hosts.is_healthy(h, timeout)]
    await asyncio.gather(*(apply(state, i, h, spec) for i, h, spec in todo))
    return len(todo)


async def start(state: ManagerState) -> None:
    """Start-up hook: run the first-boot loop in the background."""
    state.spawn(run_leased(state, LEASE, INTERVAL_S, apply_pending), name=LEASE)
