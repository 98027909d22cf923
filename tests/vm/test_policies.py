"""Policies with real guests (QEMU) and a real manager process: a cron schedule stops a VM
within one evaluation period of its due time, a TTL VM is warned about and gone on time,
and an instance group replaces a member whose VMM was killed with SIGKILL.

Run (host-global state: bridges, nftables) only as
``flock /tmp/nexus-realtests.lock .venv/bin/pytest -q tests/vm/test_policies.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.aio import all_in_one
from tests.support.server import LiveServer, free_port, login, start_manager, wait_op

from .conftest import qemu_pids_under

pytestmark = pytest.mark.vm
PW = "vm-policy-admin-pw"
PERIOD_S = 2.0  # policy_interval_s of this manager


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict]]:
    """An all-in-one manager (embedded agent) with the test image, a fast policy loop."""
    env = {
        "NEXUS_RECONCILE_INTERVAL_S": "1",
        "NEXUS_POLICY_INTERVAL_S": str(PERIOD_S),
        "NEXUS_TTL_WARNING_S": "30",
        "NEXUS_STOP_TIMEOUT_S": "15",
    }
    state = tmp_path_factory.mktemp("aio-policy") / "state"
    with all_in_one(state, admin_password=PW, env=env, image="test") as a:
        yield a.srv, a.h


def _ts(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _create(srv: LiveServer, h: dict[str, str], name: str, **kw: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{srv.url}/v1/vms?wait=true",
        json={"name": name, "image": "test", "memory_mib": 128, **kw},
        headers=h,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    vm: dict[str, Any] = r.json()
    assert vm["state"] == "running"
    return vm


def _audit(srv: LiveServer, h: dict[str, str], resource_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{srv.url}/v1/audit?resource_id={resource_id}&limit=100", headers=h)
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_cron_stops_a_vm_and_a_ttl_vm_is_gone_on_time(aio: tuple[LiveServer, dict]) -> None:
    srv, h = aio
    doomed = _create(srv, h, "doomed", ttl_s=60)
    expires = _ts(doomed["expires_at"])
    office = _create(srv, h, "office")
    r = httpx.post(
        f"{srv.url}/v1/schedules",
        json={
            "resource_id": office["id"],
            "action": "stop",
            "cron": "* * * * *",
            "timezone": "Europe/Berlin",
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    sched = r.json()
    due = _ts(sched["next_run_at"])

    # the schedule: its run starts within one period of the due time, and the VM stops
    deadline = time.monotonic() + 150
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not runs:
        runs = httpx.get(f"{srv.url}/v1/schedules/{sched['id']}/runs", headers=h).json()["items"]
        time.sleep(0.5)
    assert runs, "the schedule never ran"
    op = httpx.get(f"{srv.url}/v1/operations/{runs[0]['operation_id']}", headers=h).json()
    started = _ts(op["created_at"])
    late = (started - due).total_seconds()
    print(f"\nschedule due {due.isoformat()}, run started {late:.2f} s later")
    assert 0 <= late <= PERIOD_S + 1.0, late
    assert runs[0]["missed"] == 0
    op = wait_op(srv, h, op)
    assert op["status"] == "succeeded", op
    vm = httpx.get(f"{srv.url}/v1/vms/{office['id']}", headers=h).json()
    assert vm["state"] == "stopped" and not qemu_pids_under(srv.state_dir / "vms" / vm["id"])
    actions = [e["action"] for e in _audit(srv, h, office["id"])]
    assert "vm.stop" in actions

    # the TTL VM: warned (ttl_warned_at) before it expires, deleted on time
    warned_at = None
    while True:
        r = httpx.get(f"{srv.url}/v1/vms/{doomed['id']}", headers=h)
        if r.status_code == 404:
            break
        warned_at = r.json()["ttl_warned_at"] or warned_at
        assert datetime.now(UTC) < expires + timedelta(seconds=PERIOD_S + 20), "not deleted on time"
        time.sleep(0.5)
    gone = datetime.now(UTC)
    print(
        f"TTL VM expired {expires.isoformat()}, gone {(gone - expires).total_seconds():.2f} s later"
    )
    # (the poll above may miss the short moment the row is warned but not yet gone)
    assert warned_at is None or _ts(warned_at) < expires
    events = {e["action"]: e for e in _audit(srv, h, doomed["id"])}
    assert {"vm.ttl.warning", "vm.ttl.expire", "vm.delete"} <= set(events)
    assert _ts(events["vm.ttl.warning"]["at"]) < expires
    assert _ts(events["vm.ttl.expire"]["at"]) >= expires
    # ... and its owner got the warning as a notification
    notes = httpx.get(f"{srv.url}/v1/notifications", headers=h).json()["items"]
    assert [n["kind"] for n in notes if n["resource_id"] == doomed["id"]] == ["ttl_warning"]
    assert not (srv.state_dir / "vms" / doomed["id"]).exists()
    # the schedule's VM is deleted: the schedule turns itself off
    httpx.delete(f"{srv.url}/v1/vms/{office['id']}?wait=true", headers=h, timeout=120)
    deadline = time.monotonic() + 3 * PERIOD_S + 5
    while time.monotonic() < deadline:
        s = httpx.get(f"{srv.url}/v1/schedules/{sched['id']}", headers=h).json()
        if not s["enabled"]:
            break
        time.sleep(0.5)
    assert s["enabled"] is False and "deleted" in s["disabled_reason"]


def test_group_replaces_a_member_killed_with_sigkill(aio: tuple[LiveServer, dict]) -> None:
    srv, h = aio
    r = httpx.post(
        f"{srv.url}/v1/groups",
        json={"name": "pool", "template": {"image": "test", "memory_mib": 128}, "min": 1},
        headers=h,
    )
    assert r.status_code == 201, r.text
    gid = r.json()["id"]

    def running_members(timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            g = httpx.get(f"{srv.url}/v1/groups/{gid}", headers=h).json()
            vms = [httpx.get(f"{srv.url}/v1/vms/{m}", headers=h).json() for m in g["members"]]
            up = [v for v in vms if v.get("state") == "running" and v.get("pid")]
            if len(up) == 1 and len(vms) == 1:
                return up
            time.sleep(0.5)
        raise AssertionError(f"no single running member within {timeout} s: {g}")

    (first,) = running_members(120)
    assert first["group_id"] == gid and first["name"] == "pool-1"
    pids = qemu_pids_under(srv.state_dir / "vms" / first["id"])
    assert pids, "the member's VMM is not running"
    t0 = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while True:
        (member,) = running_members(max(1.0, deadline - time.monotonic()))
        if member["id"] != first["id"]:
            break
        time.sleep(0.5)
    print(f"\nmember replaced (new one running) {time.monotonic() - t0:.1f} s after kill -9")
    assert member["name"] != first["name"] and member["group_id"] == gid
    assert httpx.get(f"{srv.url}/v1/vms/{first['id']}", headers=h).status_code == 404
    # deleting the group removes its members
    assert httpx.delete(f"{srv.url}/v1/groups/{gid}", headers=h).status_code == 204
    deadline = time.monotonic() + 60
    while httpx.get(f"{srv.url}/v1/vms/{member['id']}", headers=h).status_code != 404:
        assert time.monotonic() < deadline, "the member outlived its group"
        time.sleep(0.5)


def test_a_cpu_busy_member_scales_the_group_up(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Default image (guest agent for exec): one member burns its vCPU; the rule (target 60%
    per vCPU, window 6 s) takes desired from 1 to 2 and a second member is made."""
    state = tmp_path_factory.mktemp("aio-scale") / "state"
    srv = start_manager(
        state,
        admin_password=PW,
        env={
            "NEXUS_EMBEDDED_AGENT": "true",
            "NEXUS_AGENT_PORT": str(free_port()),
            "NEXUS_RECONCILE_INTERVAL_S": "1",
            "NEXUS_POLICY_INTERVAL_S": str(PERIOD_S),
            "NEXUS_METRICS_INTERVAL_S": "1",
            "NEXUS_STOP_TIMEOUT_S": "10",
        },
        timeout=120,
    )
    try:
        h = login(srv, PW)
        r = httpx.post(f"{srv.url}/v1/images/build", json={"name": "default"}, headers=h)
        op = wait_op(srv, h, r.json())
        assert op["status"] == "succeeded", op
        rule = {"metric": "cpu", "target_percent": 60, "window_s": 6, "cooldown_s": 0}
        r = httpx.post(
            f"{srv.url}/v1/groups",
            json={
                "name": "busy",
                "template": {"image": op["result"]["image_id"], "memory_mib": 256},
                "min": 1,
                "max": 2,
                "scale_rule": rule,
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        gid = r.json()["id"]
        deadline = time.monotonic() + 240
        while True:
            g = httpx.get(f"{srv.url}/v1/groups/{gid}", headers=h).json()
            members = [httpx.get(f"{srv.url}/v1/vms/{m}", headers=h).json() for m in g["members"]]
            if members and members[0]["state"] == "running" and members[0]["ready_at"]:
                break
            assert time.monotonic() < deadline, g
            time.sleep(1)
        assert g["desired"] == 1, "scaled up while idle"
        vm_id = members[0]["id"]
        # burn the vCPU for a while (in the background inside the guest)
        r = httpx.post(
            f"{srv.url}/v1/vms/{vm_id}/exec",
            json={
                "command": ["sh", "-c", "timeout 90 sh -c 'while :; do :; done' >/dev/null 2>&1 &"],
                "timeout_s": 30,
            },
            headers=h,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        while True:
            g = httpx.get(f"{srv.url}/v1/groups/{gid}", headers=h).json()
            if g["desired"] == 2 and len(g["members"]) == 2:
                break
            assert time.monotonic() - t0 < rule["window_s"] + 6 * PERIOD_S + 30, g
            time.sleep(0.5)
        print(f"\nscaled 1 -> 2 members {time.monotonic() - t0:.1f} s after the load started")
        events = [e["action"] for e in _audit(srv, h, gid)]
        assert "group.autoscale" in events
    finally:
        srv.stop()
        for pid in qemu_pids_under(state):
            os.kill(pid, signal.SIGKILL)
