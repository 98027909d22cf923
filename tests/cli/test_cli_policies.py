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
