"""deploy/monitoring/alerts.yml: promtool accepts the rules, every alert fires on its fixture
and stays silent on the others (deploy/monitoring/tests/alerts_test.yml), and the fixtures
bite: a weakened rule fails them. promtool comes from Debian's ``prometheus`` package
(``scripts/install-deps.sh --test``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run scripts/install-deps.sh --test (Debian: prometheus)"
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid() -> None:
    r = _run("check", "rules", str(MONITORING / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_fires_and_stays_silent() -> None:
    r = _run("test", "rules", str(MONITORING / "tests" / "alerts_test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tests = yaml.safe_load((MONITORING / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    silent = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert fired == alerts, alerts - fired
    assert silent == alerts, alerts - silent
    for name in (
        "NexusVmStartFailures",
        "NexusHostHeartbeatMissed",
        "NexusHostDiskLow",
        "NexusHostMemoryOvercommitted",
        "NexusApiErrorRate",
        "NexusOperationBacklog",
        "NexusWebhookFailures",
        "NexusCertificateExpiringSoon",
    ):
        assert name in alerts, name


def test_a_weakened_rule_fails_the_fixtures(tmp_path: Path) -> None:
    rules = (MONITORING / "alerts.yml").read_text()
    weakened = rules.replace(
        "nexus_host_heartbeat_age_seconds > 60", "nexus_host_heartbeat_age_seconds > 600"
    )
    assert weakened != rules
    (tmp_path / "alerts.yml").write_text(weakened)
    (tmp_path / "tests").mkdir()
    shutil.copy(MONITORING / "tests" / "alerts_test.yml", tmp_path / "tests" / "alerts_test.yml")
    r = _run("test", "rules", str(tmp_path / "tests" / "alerts_test.yml"))
    assert r.returncode != 0
    assert "NexusHostHeartbeatMissed" in r.stdout + r.stderr
