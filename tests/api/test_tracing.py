"""Tracing with OpenTelemetry: off by default (no spans, no headers but the request id);
on with OTEL_EXPORTER_OTLP_ENDPOINT, a VM start is one trace across the manager and the agent
(request -> operation -> the manager's agent calls -> the agent's request spans), exported
over OTLP/HTTP to a receiver on loopback; W3C traceparent and X-Request-ID reach the agent.

The agent here runs the fake VMM driver in-process (its API over an ASGI transport); the
trace through QEMU's QMP on a real guest is tests/vm/test_tracing_vm.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.agent.api.app import create_app as create_agent_app
from nexus.agent.runtime import AgentRuntime
from nexus.core import tracing
from nexus.core.settings import Settings
from nexus.hostapi import agent_client as agent_client_module
from tests.api.conftest import ADMIN_PASSWORD, import_image, login, register_host
from tests.support.otlp import OtlpReceiver
from tests.unit.agent.conftest import SleepDriver

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        assert tracing.configure("nexus-manager")
        try:
            yield rx
        finally:
            tracing.shutdown()


@pytest.fixture
async def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    """An agent (fake VMM) whose API the manager reaches over an ASGI transport; records the
    headers of every call it receives."""
    rt = AgentRuntime(
        Settings(
            state_dir=tmp_path / "agent", cache_dir=tmp_path / "cache", guest_ready_timeout_s=5
        ),
        driver=SleepDriver(),
    )
    await rt.startup()
    box: dict[str, Any] = {"runtime": rt, "headers": [], "token": ""}
    app = create_agent_app(rt, lambda: box["token"])

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            box["headers"].append(
                (scope["path"], {k.decode(): v.decode() for k, v in scope["headers"]})
            )
        await app(scope, receive, send)

    real = agent_client_module.AgentClient

    def client(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("http", None)  # not the shared agent pool: this agent's ASGI transport
        return real(*args, transport=httpx.ASGITransport(app=recording), **kwargs)

    monkeypatch.setattr(agent_client_module, "AgentClient", client)
    yield box
    for vm_id in list(rt.vms):
        await rt.delete_vm(vm_id)
    await rt.shutdown()


async def _vm_start(
    client: httpx.AsyncClient, agent: dict[str, Any], tmp_path: Path
) -> httpx.Response:
    admin = await login(client, "admin", ADMIN_PASSWORD)
    host = await register_host(client, admin, "trace-host")
    agent["token"] = host["agent_token"]
    image = await import_image(client, admin, tmp_path)
    r = await client.post(
        "/v1/vms?wait=true&timeout=60",
        json={"name": "traced", "image": image["id"], "networks": [], "memory_mib": 128},
        headers={**admin, "X-Request-ID": "req-trace-0001"},
    )
    assert r.status_code in (200, 201), r.text
    assert r.json()["state"] == "running", r.json()
    return r


async def test_a_vm_start_is_one_trace_from_manager_to_agent(
    receiver: OtlpReceiver, app_factory: AppFactory, agent: dict[str, Any], tmp_path: Path
) -> None:
    client = await app_factory()
    await _vm_start(client, agent, tmp_path)
    tracing.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        s.name == "POST /v1/vms/{vm_id}/start" for s in receiver.spans
    ):
        await asyncio.sleep(0.1)
        tracing.flush()
    spans = receiver.spans
    root = next(s for s in spans if s.name == "POST /v1/vms" and s.kind == 2)  # SERVER
    assert root.attributes["nexus.request_id"] == "req-trace-0001"
    assert root.attributes["nexus.user_id"].startswith("usr")
    trace = [s for s in spans if s.trace_id == root.trace_id]
    names = {s.name for s in trace}
    tree = receiver.tree(root.trace_id)
    assert "operation vm.create" in names, tree
    by_id = {s.span_id: s for s in trace}
    start = next(s for s in trace if s.name == "POST /v1/vms/{vm_id}/start")
    assert start.attributes["nexus.component"] == "agent"
    assert start.attributes["nexus.request_id"] == "req-trace-0001"
    assert start.attributes["nexus.vm_id"].startswith("vm")
    op_span = next(s for s in trace if s.name == "operation vm.create")
    assert op_span.attributes["nexus.vm_id"] == start.attributes["nexus.vm_id"]
    # the agent's span is the child of the manager's client span for that call ...
    call = by_id[start.parent_id]
    assert call.name == "agent POST" and call.kind == 3, tree  # CLIENT
    assert call.attributes["nexus.host_id"].startswith("host")
    # ... which descends from the operation, which descends from the request
    chain, node = [], call
    while node.parent_id in by_id:
        node = by_id[node.parent_id]
        chain.append(node.name)
    assert chain[-1] == "POST /v1/vms" and "operation vm.create" in chain, tree
    assert any(s.name.startswith("db ") for s in trace), tree  # database statements
    assert {s.service for s in trace} == {"nexus-manager"}
    # W3C trace context and the request id reached the agent
    seen = [h for path, h in agent["headers"] if path.endswith("/start")]
    assert seen and seen[0]["traceparent"].split("-")[1] == root.trace_id
    assert seen[0]["x-request-id"] == "req-trace-0001"


async def test_tracing_is_off_by_default(
    app_factory: AppFactory, agent: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
    ):
        monkeypatch.delenv(var, raising=False)
    assert not tracing.wanted()
    assert not tracing.configure("nexus-manager")
    client = await app_factory()
    await _vm_start(client, agent, tmp_path)
    calls = [h for _, h in agent["headers"]]
    assert calls and not any("traceparent" in h for h in calls)
    # the request id still travels
    assert any(h.get("x-request-id") == "req-trace-0001" for h in calls)
    with tracing.span("x") as sp:
        assert sp is None


def test_wanted_reads_the_standard_variables() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}
    )
