"""Grafana dashboards (deploy/monitoring/dashboards) and alert rules use only metric names that
the manager and the agent really export (read from their live /metrics), and every dashboard
expression is valid PromQL (promtool parses it as a recording rule)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nexus.agent.api.app import create_app as create_agent_app
from nexus.agent.runtime import AgentRuntime
from nexus.core.settings import Settings
from tests.unit.agent.conftest import SleepDriver

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
NAME = re.compile(r"\b(nexus_[a-z0-9_]+)")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def _exported(text: str) -> set[str]:
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(fam.name + sfx for sfx in SUFFIXES.get(fam.type, ()))
        names.update(s.name for s in fam.samples)
    return names


async def _live_names(
    app_factory: Callable[..., Awaitable[httpx.AsyncClient]], tmp_path: Path
) -> set[str]:
    manager = await app_factory(metrics_scrape_allow=["10.9.8.0/24"])
    r = await manager.get("/metrics")
    assert r.status_code == 200
    names = _exported(r.text)
    rt = AgentRuntime(
        Settings(state_dir=tmp_path / "agent", cache_dir=tmp_path / "cache"), driver=SleepDriver()
    )
    await rt.startup()
    try:
        transport = httpx.ASGITransport(app=create_agent_app(rt, "t"), client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as agent:
            r = await agent.get("/metrics")
            assert r.status_code == 200
            names |= _exported(r.text)
    finally:
        await rt.shutdown()
    return names


async def test_dashboards_and_alerts_use_only_exported_metrics(
    app_factory: Callable[..., Awaitable[httpx.AsyncClient]], tmp_path: Path
) -> None:
    assert {p.stem for p in DASHBOARDS} == {"cluster", "host", "vm", "api"}
    exported = await _live_names(app_factory, tmp_path)
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        assert doc["uid"].startswith("nexus-") and doc["panels"], path
        for expr in _exprs(doc):
            for name in NAME.findall(expr):
                used.setdefault(name, set()).add(path.name)
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in NAME.findall(rule["expr"]):
                used.setdefault(name, set()).add("alerts.yml")
    missing = {n: sorted(w) for n, w in used.items() if n not in exported}
    assert not missing, f"metric names not exported by the manager or agent: {missing}"
    assert len(used) >= 30


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/install-deps.sh --test"
    rules = []
    for path in DASHBOARDS:
        for i, expr in enumerate(_exprs(json.loads(path.read_text()))):
            expr = re.sub(r"\$\w+", ".*", expr)
            if expr.startswith("label_values("):  # a Grafana template query, not PromQL
                inner = expr[len("label_values(") :].rsplit(",", 1)[0]
                expr = inner
            rules.append({"record": f"check:{path.stem}:{i}", "expr": expr})
    assert len(rules) > 40
    file = tmp_path / "dashboards.rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run(
        [promtool, "check", "rules", str(file)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
