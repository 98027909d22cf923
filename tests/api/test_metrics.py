"""Prometheus metrics of the manager: who may scrape, which series exist, bounded labels."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ADMIN_PASSWORD, login

TOKEN = "scrape-token-0123456789"
AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


def _families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


async def test_scrape_needs_the_token_or_an_allowed_address(app_factory: AppFactory) -> None:
    client = await app_factory(metrics_scrape_token=TOKEN)  # peer 10.9.8.7: not allowed
    r = await client.get("/metrics")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "metrics_scrape_allow" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status_code == 401
    # a user's access token is not a scrape token
    admin = await login(client, "admin", ADMIN_PASSWORD)
    assert (await client.get("/metrics", headers=admin)).status_code == 401
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    allowed = await app_factory(metrics_scrape_allow=["10.9.8.0/24"])
    assert (await allowed.get("/metrics")).status_code == 200
    off = await app_factory(metrics_enabled=False, metrics_scrape_allow=["10.9.8.0/24"])
    r = await off.get("/metrics")
    assert r.status_code == 401 and "disabled" in r.json()["detail"]


async def test_series_and_bounded_labels(app_factory: AppFactory) -> None:
    client = await app_factory(metrics_scrape_token=TOKEN, rate_limit_login_user="2/minute")
    scrape = {"Authorization": f"Bearer {TOKEN}"}
    admin = await login(client, "admin", ADMIN_PASSWORD)
    for _ in range(3):
        await client.post("/v1/auth/login", json={"username": "admin", "password": "nope-nope"})
    # two different VM ids: one route template
    for vm in ("vm_aaaaaaaaaaaa", "vm_bbbbbbbbbbbb"):
        assert (await client.get(f"/v1/vms/{vm}", headers=admin)).status_code == 404
    await client.get("/no/such/path/abc123")
    fams = _families((await client.get("/metrics", headers=scrape)).text)
    for name in (
        "nexus_http_requests",
        "nexus_http_request_duration_seconds",
        "nexus_vms",
        "nexus_hosts",
        "nexus_users",
        "nexus_api_tokens",
        "nexus_operations_in_progress",
        "nexus_login_failures",
        "nexus_rate_limit_rejections",
        "nexus_websockets_open",
        "nexus_db_query_duration_seconds",
        "nexus_reconciler_actions",
        "nexus_vm_start_failures",
        "nexus_build_info",
    ):
        assert name in fams, name
    routes = {lab["route"] for _, lab, _ in fams["nexus_http_requests"]}
    assert "/v1/vms/{vm_id}" in routes
    assert "<unmatched>" in routes
    assert not any("vm_aaaa" in r or "abc123" in r for r in routes), routes
    requests = {
        (lab["route"], lab["method"], lab["status"]): v
        for n, lab, v in fams["nexus_http_requests"]
        if n.endswith("_total")
    }
    assert requests[("/v1/vms/{vm_id}", "GET", "404")] >= 2
    failures = {
        lab["reason"]: v for n, lab, v in fams["nexus_login_failures"] if n.endswith("_total")
    }
    assert failures["bad_credentials"] >= 2
    assert failures["throttled"] >= 1
    limited = {
        lab["limit"]: v for n, lab, v in fams["nexus_rate_limit_rejections"] if n.endswith("_total")
    }
    assert limited["login_user"] >= 1
    vms = {lab["state"]: v for _, lab, v in fams["nexus_vms"]}
    assert vms["running"] == 0 and "stopped" in vms
    users = {lab["enabled"]: v for _, lab, v in fams["nexus_users"]}
    assert users["true"] >= 1
