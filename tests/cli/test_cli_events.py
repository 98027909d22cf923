"""``nexus events``, ``nexus notification`` and ``nexus webhook`` against a real manager."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from nexus.client import Client
from tests.cli.conftest import ADMIN_PASSWORD, NEXUS, Runner


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_events_list_shows_a_change_made_by_the_cli(logged_in: Runner) -> None:
    name = _name("ev")
    r = logged_in("network", "create", name, "-o", "json")
    assert r.code == 0, r.err
    net_id = json.loads(r.out)["id"]
    r = logged_in("events", "-t", "network.*", "-r", net_id, "-o", "json")
    assert r.code == 0, r.err
    (ev,) = json.loads(r.out)
    assert ev["type"] == "network.created" and ev["resource_name"] == name
    assert ev["actor_username"] == "admin"
    r = logged_in("events", "-t", "bad;pattern")
    assert r.code != 0 and "pattern" in r.err and "Traceback" not in r.err


def test_events_follow_prints_new_events_live(
    logged_in: Runner, manager_url: str, config_dir: Path
) -> None:
    env = {**os.environ, "NEXUS_CONFIG_DIR": str(config_dir), "COLUMNS": "200"}
    for k in ("NEXUS_URL", "NEXUS_TOKEN", "NEXUS_CONTEXT", "NEXUS_CLI_CONFIG"):
        env.pop(k, None)
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        newest = next(iter(c.events.list(limit=1)))
        proc = subprocess.Popen(
            [
                NEXUS,
                "-o",
                "json",
                "events",
                "-f",
                "-t",
                "network.created",
                "--after",
                str(newest.id),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            name = _name("live")
            c.networks.create(name)
            assert proc.stdout is not None
            ev = json.loads(proc.stdout.readline())
            assert ev["type"] == "network.created" and ev["resource_name"] == name
        finally:
            proc.kill()
            proc.wait(10)


def test_webhook_commands(logged_in: Runner) -> None:
    r = logged_in("webhook", "create", "local", "http://127.0.0.1:9/x")
    assert r.code != 0 and "webhook_allowlist" in r.err and "Traceback" not in r.err
    name = _name("wh")
    # a public address, never contacted: created disabled
    r = logged_in("webhook", "create", name, "http://8.8.8.8/x", "--disabled", "-e", "vm.*",
                  "-o", "json")  # fmt: skip
    assert r.code == 0, r.err
    hook = json.loads(r.out)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["vm.*"]
    r = logged_in("webhook", "list")
    assert r.code == 0 and name in r.out and "whsec_" not in r.out
    r = logged_in("webhook", "deliveries", name, "-o", "json")
    assert r.code == 0 and json.loads(r.out) == []
    r = logged_in("webhook", "test", name)
    assert r.code != 0 and "disabled" in r.err
    r = logged_in("webhook", "delete", name, "--yes")
    assert r.code == 0, r.err
    r = logged_in("webhook", "get", name)
    assert r.code != 0 and "nexus webhook list" in r.err


def test_notification_commands(logged_in: Runner) -> None:
    r = logged_in("notification", "list", "-o", "json")
    assert r.code == 0 and isinstance(json.loads(r.out), list)
    r = logged_in("notification", "read", "--all")
    assert r.code == 0, r.err
    r = logged_in("notification", "prefs", "--disable", "operation_succeeded", "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["disabled_kinds"] == ["operation_succeeded"]
    r = logged_in("notification", "prefs", "--enable", "operation_succeeded", "-o", "json")
    assert json.loads(r.out)["disabled_kinds"] == []
