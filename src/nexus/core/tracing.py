"""Tracing with OpenTelemetry: off by default, configured by the standard ``OTEL_*`` variables,
exported with OTLP over HTTP.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set (or ``OTEL_TRACES_EXPORTER=otlp``) and ``OTEL_SDK_DISABLED`` is not ``true``. The
exporter reads its own variables (endpoint, headers, timeout, compression);
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service. When tracing is
off every helper here returns at once: no span objects, no context lookups.

Spans: :class:`TracingMiddleware` opens a server span per HTTP request (manager and agent),
continuing a W3C ``traceparent`` it receives; :func:`outgoing_headers` gives the
``traceparent`` and ``X-Request-ID`` the manager's agent client sends; :func:`span` wraps
inner work (agent calls, QMP commands, guest channel calls). Log lines carry ``trace_id``
while a span is active.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_state: dict[str, Any] = {"enabled": False, "provider": None}

#: ``FastAPI(telemetry=...)`` for both apps: FastAPI's own OpenTelemetry spans and metrics
#: stay off (they would start a second server span per request on the global provider and
#: time every dependency); :class:`TracingMiddleware` makes the one server span we export.
FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def enabled() -> bool:
    """True once :func:`configure` turned tracing on."""
    return bool(_state["enabled"])


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter == "otlp"
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service_name: str) -> bool:
    """Set up the tracer provider when the environment asks for it (once per process);
    returns whether tracing is on."""
    if _state["enabled"]:
        return True
    if not wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if not _state.get("global_set"):  # OpenTelemetry allows one global provider per process
        trace.set_tracer_provider(provider)
        _state["global_set"] = True
    _state.update(enabled=True, provider=provider)
    return True


def shutdown() -> None:
    """Flush and stop the exporter (at process exit, and in tests)."""
    provider = _state.get("provider")
    if provider is not None:
        provider.force_flush()
        provider.shutdown()
    _state.update(enabled=False, provider=None)


def flush() -> None:
    """Export the spans ended so far."""
    provider = _state.get("provider")
    if provider is not None:
        provider.force_flush()


def _tracer() -> Any:
    return _state["provider"].get_tracer("nexus")


@contextlib.contextmanager
def span(name: str, *, client: bool = False, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` (nothing when tracing is off): internal, or a client span for
    a call to another service. ``a__b`` keywords are attributes ``a.b``; ``None`` values
    are left out."""
    if not _state["enabled"]:
        yield None
        return
    from opentelemetry.trace import SpanKind

    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with _tracer().start_as_current_span(name, kind=kind, attributes=attrs) as sp:
        yield sp


def past_span(name: str, seconds: float, **attributes: Any) -> None:
    """Record a span that just ended and lasted ``seconds`` (database statements: timed by
    engine events, so no context is entered)."""
    if not _state["enabled"]:
        return
    end = time.time_ns()
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    sp = _tracer().start_span(name, start_time=end - int(seconds * 1e9), attributes=attrs)
    sp.end(end_time=end)


def set_attributes(**attributes: Any) -> None:
    """Add attributes (``vm_id``, ``user_id``, ``host_id``, ``operation_id``...) to the
    current span."""
    if not _state["enabled"]:
        return
    from opentelemetry import trace

    sp = trace.get_current_span()
    for k, v in attributes.items():
        if v is not None:
            sp.set_attribute(k, v)


def outgoing_headers() -> dict[str, str]:
    """Headers that carry this request to another service: ``X-Request-ID`` (when the
    current log context has one) and W3C ``traceparent``/``tracestate`` (tracing on)."""
    headers: dict[str, str] = {}
    rid = structlog.contextvars.get_contextvars().get("request_id")
    if rid:
        headers["x-request-id"] = str(rid)
    if _state["enabled"]:
        from opentelemetry import propagate

        propagate.inject(headers)
    return headers


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, or None."""
    if not _state["enabled"]:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


class TracingMiddleware:
    """A server span per HTTP request, named ``METHOD /route/{template}``, continuing the
    caller's ``traceparent``; binds ``trace_id`` to the log context. A pass-through when
    tracing is off."""

    def __init__(self, app: ASGIApp, *, component: str) -> None:
        self.app = app
        self.component = component

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _state["enabled"] or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        token = context.attach(propagate.extract(carrier))
        method = str(scope.get("method", "GET"))
        status = {"code": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            with _tracer().start_as_current_span(
                f"{method} {scope.get('path', '')}",
                kind=trace.SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.path": str(scope.get("path", "")),
                    "nexus.component": self.component,
                    "nexus.request_id": carrier.get("x-request-id", ""),
                },
            ) as sp:
                tid = f"{sp.get_span_context().trace_id:032x}"
                structlog.contextvars.bind_contextvars(trace_id=tid)
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    route = scope.get("route")
                    template = getattr(route, "path_format", None) or getattr(route, "path", None)
                    if template:
                        sp.update_name(f"{method} {template}")
                        sp.set_attribute("http.route", str(template))
                    for key, value in (scope.get("path_params") or {}).items():
                        if key.endswith("_id") and isinstance(value, str):
                            sp.set_attribute(f"nexus.{key}", value)
                    sp.set_attribute("http.response.status_code", status["code"])
                    if status["code"] >= 500:
                        sp.set_status(trace.StatusCode.ERROR)
                    structlog.contextvars.unbind_contextvars("trace_id")
        finally:
            context.detach(token)
