"""The agent's metric objects (registry :data:`REGISTRY`), apart from the code that reads the
runtime (:mod:`nexus.agent.observability`), so low modules (guest connections, heartbeats)
count into them without importing the runtime."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "nexus_agent_http_requests",
    "Agent API requests, by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "nexus_agent_http_request_duration_seconds",
    "Agent API latency, by route template and method",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0),
    registry=REGISTRY,
)
HEARTBEAT_LATENCY = Histogram(
    "nexus_agent_heartbeat_latency_seconds",
    "Round trip of a heartbeat to the manager",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
HEARTBEAT_FAILURES = Counter(
    "nexus_agent_heartbeat_failures",
    "Heartbeats the manager did not accept (unreachable, refused)",
    registry=REGISTRY,
)
GUEST_CHANNEL_ERRORS = Counter(
    "nexus_agent_guest_channel_errors",
    "Guests disconnected for flooding their channel or breaking its protocol",
    registry=REGISTRY,
)
HEARTBEAT_FAILURES.inc(0)
GUEST_CHANNEL_ERRORS.inc(0)

#: time.time() of the last heartbeat the manager accepted (0: none yet); set by the
#: heartbeat loop of :mod:`nexus.agent.registration`.
heartbeat_state: dict[str, float] = {"last_ok": 0.0}


def heartbeat_ok(seconds: float) -> None:
    """Record a heartbeat the manager accepted."""
    HEARTBEAT_LATENCY.observe(seconds)
    heartbeat_state["last_ok"] = time.time()


def heartbeat_failed() -> None:
    """Record a heartbeat that failed."""
    HEARTBEAT_FAILURES.inc()
