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
