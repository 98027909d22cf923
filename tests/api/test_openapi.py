"""The OpenAPI document tells the truth: readable unique operationIds, a bearer scheme on every
authenticated operation, problem+json on every error response, one paged list shape; and the
docs pages work under the server's own CSP with assets from the server itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx

PUBLIC = {
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/health/startup"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/hosts/register"),
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


async def _doc(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def _ops(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]


async def test_operation_ids_are_readable_and_unique(client: httpx.AsyncClient) -> None:
    ops = _ops(await _doc(client))
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    bad = [i for i in ids if not re.fullmatch(r"[a-z]+(_[a-z]+)+", i)]
    assert not bad, bad
    for expected in (
        "vms_create",
        "vms_list",
        "vms_get",
        "vms_update",
        "vms_delete",
        "vms_start",
        "vms_clone",
        "images_list",
        "snapshots_create",
        "templates_instantiate",
        "auth_login",
        "tokens_list",
        "port_forwards_create",
    ):
        assert expected in ids, expected


async def test_bearer_scheme_on_every_authenticated_operation(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    public = set()
    for method, path, op in _ops(doc):
        if op["security"] == []:
            public.add((method, path))
        else:
            assert op["security"] == [{"bearer": []}], (method, path)
            assert "401" in op["responses"] and "403" in op["responses"], (method, path)
    assert public == PUBLIC


async def test_every_error_is_documented_as_problem_json(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    problem = doc["components"]["schemas"]["Problem"]
    for member in ("type", "title", "status", "detail", "instance", "request_id", "errors"):
        assert member in problem["properties"], member
    assert problem["additionalProperties"] is True
    for method, path, op in _ops(doc):
        errors = {s: r for s, r in op["responses"].items() if s.isdigit() and int(s) >= 400}
        assert "500" in errors, (method, path)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in errors, (method, path)
        for status, resp in errors.items():
            assert resp["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}, (
                method,
                path,
                status,
            )


async def test_a_real_422_matches_the_documented_problem(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.post("/v1/users", json={"username": 5}, headers=admin)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 422 and body["request_id"] == r.headers["x-request-id"]
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])


def _schema_of(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    content = op["responses"].get("200", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    ref = schema.get("$ref")
    return dict(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else dict(schema)


async def test_every_collection_is_one_paged_shape(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    collections = []
    for method, path, op in _ops(doc):
        if method != "get":
            continue
        schema = _schema_of(doc, op)
        assert schema.get("type") != "array", f"{path} answers a bare list"
        if "items" not in schema.get("properties", {}):
            continue
        collections.append(path)
        assert set(schema["properties"]) == {"items", "next_cursor"}, path
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        assert {"limit", "cursor"} <= params, path
        assert "offset" not in params, path
    for path in ("/v1/vms", "/v1/audit", "/v1/images", "/v1/networks", "/v1/volumes"):
        assert path in collections, path
    assert len(collections) >= 13


async def test_paging_walks_every_item_once(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for i in range(5):
        r = await client.post(
            "/v1/networks", json={"name": f"net{i}", "cidr": f"10.77.{i}.0/24"}, headers=admin
        )
        assert r.status_code == 201, r.text
    for path in ("/v1/networks", "/v1/users", "/v1/operations", "/v1/audit"):
        everything = (await client.get(path, params={"limit": 500}, headers=admin)).json()
        assert everything["next_cursor"] is None
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(path, params=params, headers=admin)).json()
            seen += [x["id"] for x in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [x["id"] for x in everything["items"]], path
    assert len([n for n in everything["items"]]) >= 1
    r = await client.get("/v1/networks", params={"cursor": "not-a-cursor"}, headers=admin)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.urls.append(str(a["src"]))
            else:
                self.inline_scripts += 1
        elif tag == "link" and a.get("href"):
            self.urls.append(str(a["href"]))


async def test_docs_pages_load_their_assets_from_this_server(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        r = await client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src" not in csp
        parser = _Assets()
        parser.feed(r.text)
        assert parser.inline_scripts == 0, f"{page}: an inline script is blocked by the CSP"
        scripts = [u for u in parser.urls if u.endswith(".js")]
        assert scripts, page
        for url in parser.urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page}: {url} not ours"
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 50, url
            if url.endswith(".js"):
                assert "javascript" in asset.headers["content-type"], url
            if url.endswith(".css"):
                assert asset.headers["content-type"].startswith("text/css"), url
        texts = [r.text] + [(await client.get(u)).text for u in scripts if "init" in u]
        assert any("/openapi.json" in t for t in texts), page
    assert (await client.get("/docs/assets/../../etc/passwd")).status_code == 404
    assert (await client.get("/docs/assets/core.py")).status_code == 404
