"""The policy loop: schedules, TTL, instance groups and the quota usage recount.

Runs in the replica holding the ``policies`` lease, every ``policy_interval_s`` (at most
30 s): :func:`policies_once` runs due schedules (each once, whatever it missed), warns of
and deletes expired VMs, keeps instance groups at their desired size (replacing failed
members, applying scale rules) and recounts quota usage. Each part runs on its own: one
failing does not stop the others.
"""

from __future__ import annotations

from nexus.core.logging import get_logger
from nexus.manager.features.groups import service as groups
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.schedules import service as schedules
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.ttl import service as ttl
from nexus.manager.platform.appstate import ManagerState

log = get_logger(__name__)
LEASE = "policies"


async def policies_once(state: ManagerState) -> dict[str, int]:
    """One pass. Returns counters (for tests and logs)."""
    counts: dict[str, int] = {}
    try:
        counts["schedule_runs"] = await schedules.run_due(state)
    except Exception:
        log.exception("policies.schedules_error")
    try:
        counts.update({f"ttl_{k}": v for k, v in (await ttl.expire_due(state)).items()})
    except Exception:
        log.exception("policies.ttl_error")
    try:
        counts.update({f"group_{k}": v for k, v in (await groups.reconcile_all(state)).items()})
    except Exception:
        log.exception("policies.groups_error")
    try:
        counts["quota_recounted"] = await quotas.recount_all(state.db)
    except Exception:
        log.exception("policies.quota_error")
    return counts


async def policies_pass(state: ManagerState) -> None:
    """One leased pass, logged when it did something."""
    counts = await policies_once(state)
    if any(counts.values()):
        log.info("policies.pass", **counts)


async def run(state: ManagerState) -> None:
    """The loop: every ``policy_interval_s``, a pass in the replica holding the lease."""
    await run_leased(state, LEASE, state.settings.policy_interval_s, policies_pass)


async def start(state: ManagerState) -> None:
    """Start-up hook: run the loop in the background."""
    state.spawn(run(state), name="policies")
