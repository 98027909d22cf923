"""Bounded, spread-out fan-out for the background loops that call every agent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nexus.core.logging import get_logger
from nexus.manager.platform import metrics

log = get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")


async def spread(
    items: Sequence[T],
    call: Callable[[T], Awaitable[R]],
    *,
    concurrency: int,
    period_s: float,
    gauge: str,
) -> list[R | None]:
    """``call(item)`` for every item, at most ``concurrency`` at a time, their starts spread
    evenly over ``period_s`` (0: as fast as the bound allows) — so a thousand hosts make a
    steady trickle of agent calls, not a burst that starves the heartbeats. An exception
    from one call is logged and gives None; results keep the items' order."""
    if not items:
        return []
    slots = asyncio.Semaphore(max(1, concurrency))
    step = period_s / len(items) if period_s > 0 else 0.0
    loop = asyncio.get_running_loop()
    began = loop.time()
    in_flight = metrics.AGENT_CALLS_IN_FLIGHT.labels(gauge)

    async def one(i: int, item: T) -> R | None:
        delay = began + i * step - loop.time()
        if delay > 0:  # wait for its turn first, then for a free slot
            await asyncio.sleep(delay)
        async with slots:
            in_flight.inc()
            try:
                return await call(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loop.call_failed", loop=gauge)
                return None
            finally:
                in_flight.dec()

    return list(await asyncio.gather(*(one(i, it) for i, it in enumerate(items))))
