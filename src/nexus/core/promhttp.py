"""HTTP request metrics for the manager and the agent: counts and latency by route template
(``/v1/vms/{vm_id}``, never the id itself), method and status."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template; ``<unmatched>`` when no route matched (404s), so
    unknown paths never become label values."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "<unmatched>"


class HttpMetricsMiddleware:
    """Counts ``requests`` (labels route, method, status) and observes ``duration`` (labels
    route, method) for every HTTP request; WebSockets pass through."""

    def __init__(self, app: ASGIApp, *, requests: Counter, duration: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.duration = duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = str(scope.get("method", "GET"))
            if method not in _METHODS:
                method = "OTHER"
            route = route_template(scope)
            self.requests.labels(route, method, str(status["code"])).inc()
            self.duration.labels(route, method).observe(time.perf_counter() - start)
