"""``GET /metrics``: Prometheus text format, for a scraper with the scrape token or on the
allowlist (``metrics_scrape_token``, ``metrics_scrape_allow``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from nexus.manager.features.monitoring import service
from nexus.manager.platform.deps import State

router = APIRouter(tags=["monitoring"])


async def _scrape_auth(request: Request) -> None:
    """The scrape token or an allowed address (named for the OpenAPI security pass)."""
    service.ensure_scrape_allowed(
        request.app.state.nexus,
        request.client.host if request.client else None,
        request.headers.get("authorization"),
    )


@router.get(
    "/metrics",
    dependencies=[Depends(_scrape_auth)],
    response_class=Response,
    responses={
        200: {
            "description": "Every series in the Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        401: {"description": "Not the scrape token, and the address is not allowed"},
    },
)
async def metrics(state: State) -> Response:
    """Prometheus metrics of this manager replica: HTTP requests by route template,
    operations, VM transitions and boot times, VMs by state, hosts by health and capacity,
    heartbeat ages, reconciler actions, database latency, rate-limit rejections, login
    failures, open WebSockets. Authenticated by `metrics_scrape_token` (Bearer) or a peer
    address in `metrics_scrape_allow` (default: loopback). See docs/observability.md."""
    return Response(await service.render(state), media_type=service.CONTENT_TYPE_LATEST)
