"""Functions on real guests (issue 17 "Done when"): one all-in-one manager (embedded agent,
the default image) for the module and as few builds as the checks allow — function A (for
the result, snapshot cold starts, errors, the timeout and concurrency) and function B (for
isolation from A, and a new version while an invocation is in flight on the old one).

Measured numbers (cold start from the snapshot vs the cold boot to "ready", warm latency)
are printed and written to ``$NEXUS_FN_NUMBERS`` when set."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.aio import all_in_one
from tests.support.server import LiveServer

pytestmark = pytest.mark.vm
PW = "functions-admin-pw"

A_SOURCE = """\
import os, time
SEEN = {}

def handler(event, context):
    if event.get("raise"):
        raise ValueError("asked to fail: " + str(event["raise"]))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if "write" in event:
        SEEN["secret"] = event["write"]
        with open("/tmp/secret.txt", "w") as fh:
            fh.write(event["write"])
    if event.get("peek"):
        return {"file": os.path.exists("/tmp/secret.txt"), "memory": SEEN.get("secret")}
    print("doubling", event.get("x"))
    return event.get("x", 0) * 2
"""
B_SOURCE = A_SOURCE.replace('return event.get("x", 0) * 2', 'return ["v1", event.get("x")]')


@dataclass
class Env:
    srv: LiveServer
    h: dict[str, str]
    numbers: dict[str, Any] = field(default_factory=dict)

    def post(self, path: str, body: Any, timeout: float = 600) -> httpx.Response:
        return httpx.post(f"{self.srv.url}{path}", json=body, headers=self.h, timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.srv.url}{path}", headers=self.h, timeout=60)

    def invoke(self, fn: str, event: Any, **params: str) -> httpx.Response:
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return self.post(f"/v1/functions/{fn}/invoke?{q}", {"event": event})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A manager with the embedded agent and the default image built (cached)."""
    state = tmp_path_factory.mktemp("functions") / "state"
    with all_in_one(state, admin_password=PW, env={"NEXUS_STOP_TIMEOUT_S": "5"}) as a:
        e = Env(a.srv, a.h)
        try:
            yield e
        finally:
            if e.numbers:
                print("\nfunction numbers:", json.dumps(e.numbers, indent=1))
                out = os.environ.get("NEXUS_FN_NUMBERS")
                if out:
                    with open(out, "w") as fh:
                        json.dump(e.numbers, fh, indent=1)


@pytest.fixture(scope="module")
def fn_a(env: Env) -> Any:
    r = env.post(
        "/v1/functions?wait=true",
        {
            "name": "double",
            "code": {"source": A_SOURCE},
            "handler": "main.handler",
            "memory_mib": 192,
            "timeout_s": 5,
            "concurrency": 2,
            "max_instances": 2,
            "idle_s": 5,
        },
        timeout=900,
    )
    assert r.status_code == 201, r.text
    fn = r.json()
    assert fn["version"]["state"] == "ready", fn["version"]
    env.numbers["boot_ready_ms"] = fn["version"]["boot_ready_ms"]
    env.numbers["build_ms"] = fn["version"]["build_ms"]
    return fn


def test_result_and_snapshot_cold_starts(env: Env, fn_a: Any) -> None:
    """event x=21 gives 42 from a VM restored from the ready snapshot; the next call is
    warm; after the idle period the function scales to zero, and the second cold start
    comes from the snapshot again."""
    r = env.invoke(fn_a["id"], {"x": 21})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["result"] == 42 and first["cold_start"] is True, first
    assert "doubling 21" in first["logs_tail"]
    warm = []
    for i in range(12):
        t0 = time.monotonic()
        r = env.invoke(fn_a["id"], {"x": i})
        warm.append((time.monotonic() - t0) * 1000)
        assert r.json()["result"] == 2 * i and r.json()["cold_start"] is False, r.text
    # scale to zero after idle_s (5 s) ...
    deadline = time.monotonic() + 60
    while env.get(f"/v1/functions/{fn_a['id']}").json()["warm"] and time.monotonic() < deadline:
        time.sleep(1)
    assert env.get(f"/v1/functions/{fn_a['id']}").json()["warm"] == 0
    # ... and the second cold start restores the snapshot
    t0 = time.monotonic()
    r = env.invoke(fn_a["id"], {"x": 21})
    second_ms = (time.monotonic() - t0) * 1000
    second = r.json()
    assert second["result"] == 42 and second["cold_start"] is True, second
    warm.sort()
    env.numbers.update(
        {
            "cold_start_restore_ms": [first["start_ms"], second["start_ms"]],
            "cold_invocation_ms": [first["duration_ms"], round(second_ms)],
            "fn_cold_ratio": round(second["start_ms"] / env.numbers["boot_ready_ms"], 3),
            "fn_warm_p50_ms": round(statistics.median(warm), 1),
            "fn_warm_max_ms": round(warm[-1], 1),
        }
    )


def test_errors_timeout_and_replacement(env: Env, fn_a: Any) -> None:
    """A raising handler gives a structured error with the guest's traceback (not a 5xx);
    a handler past timeout_s is killed with its VM, and the next call gets a new VM."""
    r = env.invoke(fn_a["id"], {"raise": "please"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "error" and out["error"]["type"] == "ValueError", out
    assert "asked to fail: please" in out["error"]["message"]
    tb = out["error"]["traceback"]
    assert "Traceback" in tb and "main.py" in tb and 'raise ValueError("asked to fail' in tb
    assert env.invoke(fn_a["id"], {"x": 1}).json()["cold_start"] is False  # the VM lived on
    r = env.invoke(fn_a["id"], {"sleep": 30})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "timed_out" and r.json()["error"]["type"] == "Timeout"
    assert r.json()["duration_ms"] < 20_000
    r = env.invoke(fn_a["id"], {"x": 4})
    assert r.json()["result"] == 8, r.text
    # an oversize event is refused up front
    r = env.invoke(fn_a["id"], {"blob": "x" * 300_000})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


def test_ten_concurrent_with_concurrency_two(env: Env, fn_a: Any) -> None:
    """10 invocations at once, concurrency 2: all succeed, on at most 2 VMs."""
    began = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        rs = list(pool.map(lambda i: env.invoke(fn_a["id"], {"x": i}), range(10)))
    wall = time.monotonic() - began
    assert [r.status_code for r in rs] == [200] * 10, [r.text for r in rs]
    assert sorted(r.json()["result"] for r in rs) == [2 * i for i in range(10)]
    assert env.get(f"/v1/functions/{fn_a['id']}").json()["warm"] <= 2
    # invocations per second at concurrency 4 (2 VMs: the limit is the function's)
    with ThreadPoolExecutor(4) as pool:
        t0 = time.monotonic()
        rs = list(pool.map(lambda i: env.invoke(fn_a["id"], {"x": i}), range(20)))
        rate = 20 / (time.monotonic() - t0)
    assert all(r.status_code == 200 for r in rs)
    env.numbers.update(
        {"ten_concurrent_wall_s": round(wall, 2), "invocations_per_s_c4": round(rate, 1)}
    )


def test_isolation_and_new_version_while_in_flight(env: Env, fn_a: Any) -> None:
    """Function B never sees A's files or memory; an invocation in flight on B's version 1
    finishes there while the next invocation runs the new version 2."""
    assert env.invoke(fn_a["id"], {"write": "a-secret"}).status_code == 200
    peek = env.invoke(fn_a["id"], {"peek": True}).json()["result"]
    r = env.post(
        "/v1/functions?wait=true",
        {
            "name": "other",
            "code": {"source": B_SOURCE},
            "memory_mib": 192,
            "timeout_s": 300,
            "max_instances": 2,
            "concurrency": 2,
        },
        timeout=900,
    )
    assert r.status_code == 201 and r.json()["version"]["state"] == "ready", r.text
    b = r.json()
    seen = env.invoke(b["id"], {"peek": True}).json()
    assert seen["result"] == {"file": False, "memory": None}, (seen, peek)
    assert env.invoke(b["id"], {"x": 1}).json()["result"] == ["v1", 1]
    # in flight on v1 for longer than a build takes
    sleep_s = max(30, round(3 * b["version"]["build_ms"] / 1000))
    r = env.invoke(b["id"], {"sleep": sleep_s, "x": 7}, **{"async": "true"})
    assert r.status_code == 202, r.text
    inflight = r.json()["id"]
    time.sleep(1)
    r = httpx.patch(
        f"{env.srv.url}/v1/functions/{b['id']}?wait=true",
        json={"code": {"source": B_SOURCE.replace('["v1"', '["v2"')}},
        headers=env.h,
        timeout=900,
    )
    assert r.status_code == 200 and r.json()["version"]["state"] == "ready", r.text
    assert r.json()["aliases"]["latest"] == 2
    new = env.invoke(b["id"], {"x": 8}).json()
    assert new["result"] == ["v2", 8] and new["version"] == 2, new
    still = env.get(f"/v1/functions/{b['id']}/invocations/{inflight}").json()
    assert still["status"] in ("queued", "running"), still  # it was in flight all along
    deadline = time.monotonic() + sleep_s + 120
    while still["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(2)
        still = env.get(f"/v1/functions/{b['id']}/invocations/{inflight}").json()
    assert still["status"] == "succeeded" and still["result"] == ["v1", 7], still
    assert still["version"] == 1
    r = env.get(f"/v1/functions/{b['id']}/invocations")
    assert len(r.json()["items"]) >= 4
    # deleting a function removes its VMs
    assert httpx.delete(f"{env.srv.url}/v1/functions/{b['id']}", headers=env.h).status_code == 204
