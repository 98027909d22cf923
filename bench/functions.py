"""The functions phase of ``make bench`` (issue 17): a cold invocation restored from the
version's ready snapshot against a cold boot to the same "ready" point (the handler
imported), warm invocation latency through the API, and invocations per second at
concurrency 4.

* ``fn_cold_ratio`` = the cold invocation (client-measured: VM restored from the snapshot +
  the call) / the cold boot of the build VM to "handler imported" (``boot_ready_ms``,
  measured by the manager when the version was built). Goal <= 0.15.
* ``fn_warm_p50_ms`` / ``fn_warm_p99_ms``: sequential warm invocations, client-measured.
* ``fn_invocations_per_s_c4``: 4 client threads, a function with concurrency 4.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

SOURCE = "def handler(event, context):\n    return event.get('x', 0) * 2\n"
GOALS = {"fn_cold_ratio": ("<=", 0.15), "fn_warm_p50_ms": ("<=", 25.0)}
ROWS = [
    ("fn_cold_ratio", "function cold invoke (snapshot restore) / cold boot to ready"),
    ("fn_warm_p50_ms", "warm function invoke through the API, p50 ms"),
    ("fn_warm_p99_ms", "warm function invoke through the API, p99 ms"),
    ("fn_invocations_per_s_c4", "function invocations/s at concurrency 4"),
]
SUMMARY_KEYS = tuple(k for k, _ in ROWS)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _wait_cold(c: httpx.Client, fn_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while c.get(f"/v1/functions/{fn_id}").json()["warm"] and time.monotonic() < deadline:
        time.sleep(0.5)


def bench_functions(
    client: Callable[[], httpx.Client],
    log: Callable[[str], None],
    *,
    cold_runs: int = 3,
    warm_runs: int = 100,
    memory_mib: int = 128,
) -> dict[str, Any]:
    """Build one function, then measure cold, warm and concurrent invocations."""
    with client() as c:
        r = c.post(
            "/v1/functions",
            params={"wait": "true"},
            json={
                "name": "bench-fn",
                "code": {"source": SOURCE},
                "memory_mib": memory_mib,
                "concurrency": 4,
                "max_instances": 4,
                "idle_s": 5,
            },
            timeout=900,
        )
        r.raise_for_status()
        fn = r.json()
        if fn["version"]["state"] != "ready":
            raise RuntimeError(f"the bench function did not build: {fn['version']}")
        fn_id, boot_ready_ms = fn["id"], fn["version"]["boot_ready_ms"]
        log(f"functions: built in {fn['version']['build_ms']} ms (boot to ready {boot_ready_ms})")
        try:
            cold: list[float] = []
            for i in range(cold_runs):
                _wait_cold(c, fn_id)
                t0 = time.monotonic()
                r = c.post(f"/v1/functions/{fn_id}/invoke", json={"event": {"x": i}}, timeout=300)
                r.raise_for_status()
                if not r.json()["cold_start"]:
                    raise RuntimeError("expected a cold start")
                cold.append((time.monotonic() - t0) * 1000)
                log(f"functions: cold {i + 1}/{cold_runs}: {cold[-1]:.0f} ms")
            warm: list[float] = []
            for i in range(warm_runs):
                t0 = time.monotonic()
                r = c.post(f"/v1/functions/{fn_id}/invoke", json={"event": {"x": i}})
                r.raise_for_status()
                warm.append((time.monotonic() - t0) * 1000)

            def one(i: int) -> bool:
                resp = c.post(f"/v1/functions/{fn_id}/invoke", json={"event": {"x": i}})
                return resp.status_code == 200

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(one, range(8)))  # bring up the 4 VMs
                t0 = time.monotonic()
                ok = sum(pool.map(one, range(80)))
                rate = ok / (time.monotonic() - t0)
        finally:
            c.delete(f"/v1/functions/{fn_id}")
    return {
        "fn_cold_ratio": round(statistics.median(cold) / boot_ready_ms, 3),
        "fn_cold_ms": [round(x) for x in cold],
        "fn_boot_ready_ms": boot_ready_ms,
        "fn_warm_p50_ms": round(_pct(warm, 0.5), 1),
        "fn_warm_p99_ms": round(_pct(warm, 0.99), 1),
        "fn_invocations_per_s_c4": round(rate, 1),
    }
