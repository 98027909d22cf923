"""The manager's Prometheus metrics: one registry, the series every part of the manager
counts into, the HTTP middleware that times requests by route template, and the database
query timer.

Label values are bounded by construction: routes are templates (``/v1/vms/{vm_id}``, never a
VM id), operation kinds, VM states, limit names and host names (one per registered host).
Gauges that describe the database (VMs by state, hosts by health, users, tokens, heartbeat
age) are computed when ``/metrics`` is scraped (``features/monitoring``), so every replica
reports the same truth without a loop of its own.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Scope

from nexus.core import promhttp, tracing

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LONG = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

HTTP_REQUESTS = Counter(
    "nexus_http_requests",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "nexus_http_request_duration_seconds",
    "HTTP request latency by route template and method",
    ["route", "method"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
OPERATIONS = Counter(
    "nexus_operations",
    "Operations that ended, by kind and outcome (succeeded, failed, cancelled)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
OPERATION_DURATION = Histogram(
    "nexus_operation_duration_seconds",
    "Run time of operations that ended, by kind and outcome",
    ["kind", "outcome"],
    buckets=_LONG,
    registry=REGISTRY,
)
VM_TRANSITIONS = Counter(
    "nexus_vm_transitions",
    "VM state changes recorded by the VM engine and the reconciler",
    ["from_state", "to_state"],
    registry=REGISTRY,
)
VM_BOOT_DURATION = Histogram(
    "nexus_vm_boot_duration_seconds",
    "From asking the host to start a VM until its guest agent answered (or it failed)",
    ["outcome"],
    buckets=_LONG,
    registry=REGISTRY,
)
VM_START_FAILURES = Counter(
    "nexus_vm_start_failures",
    "VM starts that ended in failure (the VMM or guest did not come up)",
    registry=REGISTRY,
)
RECONCILER_RUNS = Counter(
    "nexus_reconciler_runs", "Reconciler passes this replica ran", registry=REGISTRY
)
RECONCILER_ACTIONS = Counter(
    "nexus_reconciler_actions",
    "What the reconciler did: updated (drift found), settled, orphans_removed, agent_unreachable",
    ["action"],
    registry=REGISTRY,
)
AGENT_REQUEST_DURATION = Histogram(
    "nexus_agent_request_duration_seconds",
    "Calls from the manager to agents, by host and outcome (ok, error, unreachable)",
    ["host", "outcome"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
DB_QUERY_DURATION = Histogram(
    "nexus_db_query_duration_seconds",
    "Database statements by kind (select, insert, update, delete, other)",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "nexus_rate_limit_rejections",
    "Requests refused by a rate limit (429), by limit name",
    ["limit"],
    registry=REGISTRY,
)
LOGIN_FAILURES = Counter(
    "nexus_login_failures",
    "Failed password logins, by reason (bad_credentials, throttled, disabled)",
    ["reason"],
    registry=REGISTRY,
)
WEBSOCKETS = Gauge(
    "nexus_websockets_open",
    "WebSockets open on this replica, by kind",
    ["kind"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "nexus_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, failed)",
    ["outcome"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "nexus_events",
    "Events written by this process's commits, by resource type",
    ["resource_type"],
    registry=REGISTRY,
)
EVENT_STREAMS = Gauge(
    "nexus_event_streams_open",
    "Live event streams (GET /v1/events/stream) open on this replica",
    registry=REGISTRY,
)
BACKUPS = Counter(
    "nexus_backups",
    "Backups made by this process, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
LAST_BACKUP = Gauge(
    "nexus_backup_last_success_timestamp_seconds",
    "When this process last made a backup successfully (Unix time)",
    registry=REGISTRY,
)
LOOP_LEADER = Gauge(
    "nexus_loop_leader",
    "1 when this replica holds the lease of the background loop (and runs it), else 0",
    ["loop"],
    registry=REGISTRY,
)
HEARTBEATS_BATCHED = Counter(
    "nexus_heartbeats_batched",
    "Heartbeats whose live facts this replica wrote in a batch (not in their own request)",
    registry=REGISTRY,
)
AGENT_CALLS_IN_FLIGHT = Gauge(
    "nexus_agent_calls_in_flight",
    "Agent calls the reconciler and the metrics sampler have in flight on this replica",
    ["loop"],
    registry=REGISTRY,
)
for _kind in ("shell", "console", "metrics"):
    WEBSOCKETS.labels(_kind).set(0)
for _outcome in ("delivered", "failed"):
    WEBHOOK_DELIVERIES.labels(_outcome)
for _outcome in ("succeeded", "failed"):
    BACKUPS.labels(_outcome)
for _reason in ("bad_credentials", "throttled", "disabled"):
    LOGIN_FAILURES.labels(_reason)
for _action in ("updated", "settled", "orphans_removed", "agent_unreachable"):
    RECONCILER_ACTIONS.labels(_action)
VM_START_FAILURES.inc(0)


def route_template(scope: Scope) -> str:
    """The matched route's template (see :func:`nexus.core.promhttp.route_template`)."""
    return promhttp.route_template(scope)


class MetricsMiddleware(promhttp.HttpMetricsMiddleware):
    """Counts and times every HTTP request of the manager by route template."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, requests=HTTP_REQUESTS, duration=HTTP_DURATION)


_KINDS = ("select", "insert", "update", "delete")


def instrument_engine(engine: AsyncEngine) -> None:
    """Time every statement of ``engine`` into ``nexus_db_query_duration_seconds``."""
    sync = engine.sync_engine
    if getattr(sync, "_nexus_timed", False):
        return
    sync._nexus_timed = True  # type: ignore[attr-defined]

    @event.listens_for(sync, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("_nexus_t0", []).append(time.perf_counter())

    @event.listens_for(sync, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        stack = conn.info.get("_nexus_t0")
        if not stack:
            return
        word = statement.lstrip()[:6].lower()
        kind = word if word in _KINDS else "other"
        seconds = time.perf_counter() - stack.pop()
        DB_QUERY_DURATION.labels(kind).observe(seconds)
        if tracing.enabled():
            tracing.past_span(f"db {kind}", seconds, db__system=conn.dialect.name)

    @event.listens_for(sync, "handle_error")
    def _error(ctx: Any) -> None:
        conn = ctx.connection
        if conn is not None and conn.info.get("_nexus_t0"):
            conn.info["_nexus_t0"].pop()


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
