"""Every route in the OpenAPI document rejects a request without credentials with 401,
except health, login, refresh and the OpenAPI/docs pages."""

from __future__ import annotations

import re

import httpx

PUBLIC = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/health/startup"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/refresh"),
    ("POST", "/v1/hosts/register"),  # authenticated by the join token in the body
}


async def test_every_route_requires_authentication(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    checked = 0
    for path, methods in spec["paths"].items():
        for method in methods:
            m = method.upper()
            if (m, path) in PUBLIC:
                continue
            url = re.sub(r"\{[^}]+\}", "x_1", path)
            r = await client.request(m, url, json={})
            assert r.status_code == 401, f"{m} {path} answered {r.status_code} without credentials"
            checked += 1
    assert checked >= 12


async def test_no_route_hops_to_a_thread_for_a_dependency(client: httpx.AsyncClient) -> None:
    """A plain ``def`` dependency (or endpoint) runs in FastAPI's thread pool: a thread
    hop on every request that cost the listing ~20 % of its throughput. All are async."""
    import inspect

    from fastapi.routing import APIRoute

    app = client.app  # type: ignore[attr-defined]
    sync: list[str] = []

    def walk(dependant, where: str) -> None:  # type: ignore[no-untyped-def]
        call = dependant.call
        if call is not None and not (
            inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
        ):
            if not isinstance(call, type):  # classes (request models) are not called in threads
                sync.append(f"{where}: {getattr(call, '__qualname__', call)}")
        for sub in dependant.dependencies:
            walk(sub, where)

    def flatten(routes: list) -> list[APIRoute]:  # type: ignore[type-arg]
        out: list[APIRoute] = []
        for r in routes:
            if isinstance(r, APIRoute):
                out.append(r)
            # FastAPI >= 0.16x keeps included routers whole (_IncludedRouter)
            inner = getattr(r, "original_router", None) or getattr(r, "router", None)
            if inner is not None and inner is not r:
                out += flatten(list(getattr(inner, "routes", [])))
        return out

    routes = flatten(list(app.routes))
    for route in routes:
        walk(route.dependant, f"{sorted(route.methods)} {route.path}")
    assert len(routes) > 50
    assert not sync, sync
