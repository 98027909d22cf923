"""``nexus quota`` (and the SDK's ``client.quotas``) against a real manager."""

from __future__ import annotations

import json
import uuid

import pytest

from nexus.client import Client, Forbidden, NotFound
from tests.cli.conftest import ADMIN_PASSWORD, Runner


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def operator(manager_url: str) -> tuple[str, str]:
    """A fresh operator: (username, password)."""
    name, pw = _name("op"), "operator-password-1"
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        c.users.create(name, pw, role="operator")
    return name, pw


def test_quota_show_and_set(logged_in: Runner, operator: tuple[str, str]) -> None:
    user, _ = operator
    r = logged_in("quota", "set", user, "vms=3", "memory_mib=unlimited")
    assert r.code == 0, r.err
    assert "vms" in r.out and "unlimited" in r.out and "override" in r.out
    r = logged_in("quota", "set", user, "networks=2", "-o", "json")
    assert r.code == 0, r.err
    q = json.loads(r.out)
    assert q["overrides"] == {"vms": 3, "memory_mib": -1, "networks": 2}  # kept the others
    r = logged_in("quota", "set", user, "vms=default", "--replace", "-o", "json")
    assert json.loads(r.out)["overrides"] == {}
    r = logged_in("quota", "show", user, "-o", "json")
    assert r.code == 0 and json.loads(r.out)["usage"]["vms"] == 0
    r = logged_in("quota", "show")
    assert r.code == 0 and "unlimited" in r.out  # the admin's own
    r = logged_in("quota", "set", user, "gpus=1")
    assert r.code != 0 and "gpus" in r.err


def test_sdk_quotas(manager_url: str, operator: tuple[str, str]) -> None:
    user, pw = operator
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as admin:
        q = admin.quotas.set(user, networks=0)
        assert q.limits["networks"] == 0 and q.username == user
    with Client.login(manager_url, user, pw) as me:
        assert me.quotas.me().limits["networks"] == 0
        with pytest.raises(Forbidden) as e:
            me.networks.create(_name("n"))
        assert e.value.body is not None and e.value.body["quota"] == "networks"
        with pytest.raises(Forbidden):
            me.quotas.set(user, networks=5)
        with pytest.raises(NotFound):
            me.quotas.get("admin")


def test_group_and_schedule_commands(logged_in: Runner) -> None:
    name = _name("g")
    r = logged_in(
        "group", "create", name, "--min", "0", "--max", "3", "--desired", "0", "-o", "json"
    )
    assert r.code == 0, r.err
    g = json.loads(r.out)
    assert g["desired"] == 0 and g["max"] == 3
    r = logged_in("group", "scale", name, "9", "-o", "json")
    assert r.code == 0 and json.loads(r.out)["desired"] == 3  # clamped
    r = logged_in("group", "scale", name, "0")
    assert r.code == 0, r.err
    r = logged_in("group", "list")
    assert r.code == 0 and name in r.out and "DESIRED" in r.out

    r = logged_in(
        "schedule",
        "create",
        name,
        "scale",
        "0 8 * * 1-5",
        "--group",
        "--tz",
        "Europe/Berlin",
        "--arg",
        "desired=2",
        "-o",
        "json",
    )
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["resource_id"] == g["id"] and s["args"] == {"desired": 2}
    assert s["timezone"] == "Europe/Berlin" and s["next_run_at"]
    r = logged_in("schedule", "list", "--resource", g["id"])
    assert r.code == 0 and s["id"] in r.out
    r = logged_in("schedule", "update", s["id"], "--disable", "-o", "json")
    assert r.code == 0 and json.loads(r.out)["enabled"] is False
    r = logged_in("schedule", "runs", s["id"], "-o", "json")
    assert r.code == 0 and json.loads(r.out) == []
    r = logged_in("schedule", "create", name, "scale", "not a cron", "--group")
    assert r.code == 1 and "cron" in r.err
    assert logged_in("schedule", "delete", s["id"]).code == 0
    assert logged_in("group", "delete", name, "--yes").code == 0
    r = logged_in("group", "get", name)
    assert r.code == 1 and "not found" in r.err


def test_vm_ttl_flags(logged_in: Runner) -> None:
    r = logged_in("vm", "create", "x", "--ttl", "5q")
    assert r.code == 2 and "--ttl" in r.err
    r = logged_in("vm", "extend", "vm_nope", "--by", "1h", "--clear")
    assert r.code == 2 and "exactly one" in r.err
    r = logged_in("vm", "extend", "vm_nope", "--by", "1h")
    assert r.code == 1 and "not found" in r.err


def test_parse_duration() -> None:
    from nexus.cli.commands.vms import parse_duration

    assert parse_duration("2h", "--ttl") == 7200
    assert parse_duration("1h30m", "--ttl") == 5400
    assert parse_duration("90", "--ttl") == 90
    assert parse_duration("1d", "--ttl") == 86400
