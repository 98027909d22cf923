"""The policy loop: schedules, TTL, instance groups and the quota usage recount.

Runs in the replica holding the ``policies`` lease, every ``policy_interval_s`` (at most
30 s): :func:`policies_once` runs due schedules (each once, whatever it missed), warns of
and deletes expired VMs, keeps instance groups at their desired size (replacing failed
members, applying scale rules) and recounts quota usage. Each part runs on its own: one
failing does not stop the others.
"""

from __future__ import annotations

import asyncio

from nexus.core.logging import get_logger
from nexus.manager.features.groups import service as groups
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.schedules import service as schedules
from nexus.manager.features.system.service import try_acquire_lease
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


async def run(state: ManagerState) -> None:
    """The loop: take the lease, run a pass, sleep; forever."""
    interval = state.settings.policy_interval_s
    while True:
        try:
            async with state.db.session() as s:
                leader = await try_acquire_lease(
                    db_session=s, name=LEASE, holder=state.replica_id, ttl_s=max(interval * 3, 5)
                )
            if leader:
                counts = await policies_once(state)
                if any(counts.values()):
                    log.info("policies.pass", **counts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("policies.error")
        await asyncio.sleep(interval)


async def start(state: ManagerState) -> None:
    """Start-up hook: run the loop in the background."""
    state.spawn(run(state), name="policies")
