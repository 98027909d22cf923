"""A real Prometheus (Debian's ``prometheus``) on loopback scrapes a running manager and its
agent (all-in-one: ``nexus-manager serve`` with the embedded agent), with the scrape token,
and PromQL queries return the series they export."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.server import LiveServer, free_port, start_manager

TOKEN = "prometheus-scrape-token-42"
PASSWORD = "scrape-admin-pass-1"


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _wait(prom: str, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(prom, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture
def manager(tmp_path: Path) -> Any:
    agent_port = free_port()
    srv = start_manager(
        tmp_path / "state",
        admin_password=PASSWORD,
        env={
            "NEXUS_EMBEDDED_AGENT": "true",
            "NEXUS_AGENT_PORT": str(agent_port),
            "NEXUS_METRICS_SCRAPE_TOKEN": TOKEN,
            "NEXUS_METRICS_SCRAPE_ALLOW": "[]",  # the token only, even on loopback
            "NEXUS_HEARTBEAT_INTERVAL_S": "1",
        },
        timeout=120,
    )
    try:
        yield srv, agent_port
    finally:
        srv.stop()


def test_prometheus_scrapes_manager_and_agent(tmp_path: Path, manager: Any) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run scripts/install-deps.sh --test"
    srv: LiveServer = manager[0]
    agent_port: int = manager[1]
    mport = srv.url.rsplit(":", 1)[1]
    # without the token both refuse (the allowlist is empty)
    assert httpx.get(f"{srv.url}/metrics").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{agent_port}/metrics").status_code == 401
    token_file = tmp_path / "scrape-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    auth = {"type": "Bearer", "credentials_file": str(token_file)}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(__file__).resolve().parents[2] / "deploy/monitoring/alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "nexus-manager",
                "authorization": auth,
                "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}],
            },
            {
                "job_name": "nexus-agent",
                "authorization": auth,
                "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    pport = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{pport}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = f"http://127.0.0.1:{pport}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if httpx.get(f"{prom}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        up = _wait(prom, 'up{job=~"nexus-.*"} == 1')
        jobs = {r["metric"]["job"] for r in up}
        deadline = time.monotonic() + 60
        while jobs != {"nexus-manager", "nexus-agent"} and time.monotonic() < deadline:
            time.sleep(0.5)
            jobs = {r["metric"]["job"] for r in _query(prom, 'up{job=~"nexus-.*"} == 1')}
        assert jobs == {"nexus-manager", "nexus-agent"}, (tmp_path / "prometheus.log").read_text()
        # the manager sees its embedded host healthy; the agent reports its VMM count
        healthy = _wait(prom, 'nexus_hosts{health="healthy"} >= 1')
        assert healthy and healthy[0]["metric"]["job"] == "nexus-manager"
        assert _wait(prom, 'nexus_agent_vmm_processes{job="nexus-agent"}')
        age = _wait(prom, "nexus_host_heartbeat_age_seconds")
        assert age and float(age[0]["value"][1]) < 60
        # request metrics by route template: the scrapes themselves
        scrapes = _wait(prom, 'nexus_http_requests_total{route="/metrics",status="200"}')
        assert scrapes and float(scrapes[0]["value"][1]) >= 1
        assert _wait(prom, 'nexus_agent_http_requests_total{route="/metrics"}')
        # the alert rules loaded, and none fires on a healthy all-in-one
        r = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()
        names = {rule["name"] for g in r["data"]["groups"] for rule in g["rules"]}
        assert "NexusHostHeartbeatMissed" in names
        firing = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        assert not [a for a in firing if a["state"] == "firing"], firing
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
