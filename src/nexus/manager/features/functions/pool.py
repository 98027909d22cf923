"""The warm pool of one manager process: per function, its running VMs (instances), a
concurrency limit (a semaphore of ``min(concurrency, max_instances)`` slots) and a bounded
queue of waiting invocations (429 beyond ``max_queue``). A VM handles one invocation at a
time: an invocation holds a slot, then checks out an idle instance of its version, or starts
one from the version's snapshot (a cold start).

Pools live in memory (``state.extras``): each manager replica keeps its own VMs; a restart
deletes the VMs a previous process left behind (see ``service.cleanup_leftovers``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nexus.core.errors import RateLimited
from nexus.manager.features.functions.runtime import Instance
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal

POOLS_KEY = "functions.pools"


class Limiter:
    """A counting limit whose size can change while tasks wait on it (a semaphore's
    cannot): ``limit`` slots, ``used`` taken."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = asyncio.Condition()

    def locked(self) -> bool:
        """True when no slot is free."""
        return self.used >= self.limit

    async def acquire(self) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.used < self.limit)
            self.used += 1

    async def release(self) -> None:
        async with self.cond:
            self.used = max(0, self.used - 1)
            self.cond.notify_all()

    async def resize(self, limit: int) -> None:
        async with self.cond:
            self.limit = limit
            self.cond.notify_all()


@dataclass
class Pool:
    """One function's instances and limits on this manager."""

    function_id: str
    owner: Principal
    slots: int
    max_queue: int
    max_instances: int
    sem: Limiter
    instances: list[Instance] = field(default_factory=list)
    waiting: int = 0
    starting: int = 0
    closed: bool = False

    def idle(self, version: int | None = None) -> list[Instance]:
        """Instances free to take an invocation (of ``version`` when given)."""
        return [
            i
            for i in self.instances
            if not i.busy and not i.broken and (version is None or i.version == version)
        ]

    async def enter(self) -> None:
        """Take a concurrency slot, waiting in the bounded queue; 429 when it is full."""
        if self.sem.locked() and self.waiting >= self.max_queue:
            raise RateLimited(
                f"function '{self.function_id}' is at its concurrency limit ({self.slots}) "
                f"and {self.waiting} invocations are waiting (max_queue {self.max_queue})",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1

    async def leave(self) -> None:
        """Give the slot back."""
        await self.sem.release()

    def checkout(self, version: int) -> tuple[Instance | None, list[Instance]]:
        """An idle instance of ``version`` (marked busy), or None (start one) and the idle
        instances of other versions to stop to make room."""
        for inst in self.idle(version):
            inst.busy = True
            return inst, []
        evict: list[Instance] = []
        room = self.max_instances - len(self.instances) - self.starting
        for inst in self.idle():
            if room > 0:
                break
            if inst.version != version:
                self.instances.remove(inst)
                evict.append(inst)
                room += 1
        if room <= 0:  # only idle instances of this version are left... or none: take one
            for inst in self.idle():
                self.instances.remove(inst)
                evict.append(inst)
                break
        self.starting += 1
        return None, evict

    def add_started(self, inst: Instance) -> None:
        """A freshly started instance joins the pool, busy with its first invocation."""
        self.starting -= 1
        inst.busy = True
        self.instances.append(inst)

    def start_failed(self) -> None:
        self.starting -= 1

    def release(self, inst: Instance) -> bool:
        """The invocation is over; True when the instance stays (False: stop it)."""
        inst.busy = False
        inst.last_used = time.monotonic()
        if inst.broken or self.closed:
            if inst in self.instances:
                self.instances.remove(inst)
            return False
        return True


def pools(state: ManagerState) -> dict[str, Pool]:
    """This process's pools by function id."""
    found: dict[str, Pool] = state.extras.setdefault(POOLS_KEY, {})
    return found


async def get_pool(
    state: ManagerState,
    function_id: str,
    owner: Principal,
    *,
    concurrency: int,
    max_instances: int,
    max_queue: int,
) -> Pool:
    """The function's pool, made on first use; new limits apply to later invocations."""
    all_pools = pools(state)
    slots = max(1, min(concurrency, max_instances))
    p = all_pools.get(function_id)
    if p is None or p.closed:
        p = Pool(function_id, owner, slots, max_queue, max_instances, Limiter(slots))
        all_pools[function_id] = p
    elif p.slots != slots:
        p.slots = slots
        await p.sem.resize(slots)
    p.max_queue, p.max_instances = max_queue, max_instances
    return p
